"""Hook implementations of the data plugin: one registered dataset per file format, each with a
``detect`` function so formats are recognised from the records."""

from __future__ import annotations

from typing import Any

from easyetcon.hookspecs import hookimpl
from easyetcon_data import counterfact, knowedit, native, qa, zsre
from easyetcon_data.common import FileDatasetConfig, file_loader

#: Registered in this order, which is the order detection tries them in: the most specific shapes first.
FORMATS = [
    # name, converter, detect, summary, unwrap
    ("edit-requests", native.convert_request, native.detect_requests,
     "easyetcon's own request files (a list of EditRequest objects)", native.unwrap_requests),
    ("knowedit-zsre", knowedit.make_convert("knowedit-zsre"), knowedit.detect_zsre,
     "KnowEdit ZsRE (ZsRE-test-all.json): questions, rephrases, Relation_Specificity locality, portability", None),
    ("knowedit-counterfact", knowedit.make_convert("knowedit-counterfact"), knowedit.detect_counterfact,
     "KnowEdit wiki_counterfact (train_cf.json): Relation_Specificity and Forgetfulness locality, portability", None),
    ("knowedit-recent", knowedit.make_convert("knowedit-recent"), knowedit.detect_recent,
     "KnowEdit wiki_recent (recent_train.json): new facts, alias lists in locality and portability", None),
    ("knowedit", knowedit.make_convert("knowedit"), knowedit.detect_any,
     "Any KnowEdit record of the shared ZsRE/wiki_recent/wiki_counterfact schema", None),
    ("knowedit-wikibio", knowedit.convert_wikibio, knowedit.detect_wikibio,
     "KnowEdit WikiBio (wikibio-test-all.json): biography continuations", None),
    ("knowedit-sanitation", knowedit.convert_sanitation, knowedit.detect_sanitation,
     "KnowEdit Sanitation (trivia_qa_test.json): answer 'I don't know.', locality questions", knowedit.unwrap_sanitation),
    ("counterfact", counterfact.convert_rome, counterfact.detect_rome,
     "CounterFact in the ROME schema (requested_rewrite, paraphrase/neighborhood/generation prompts)", None),
    ("counterfact-easyedit", counterfact.convert_flat, counterfact.detect_flat,
     "EasyEdit's flattened CounterFact (prompt, rephrase_prompt, locality_prompt)", None),
    ("zsre-mend", zsre.convert_mend, zsre.detect_mend,
     "ZsRE in the MEND schema (src, alt, answers, rephrase, loc, loc_ans) with portability", None),
    ("qa", qa.convert_qa, qa.detect_qa,
     "Plain question-answer edits (question, new_answer, old_answer, paraphrases, unrelated)", None),
]


@hookimpl
def easyetcon_register_datasets(register: Any) -> None:
    for name, convert, detect, summary, unwrap in FORMATS:
        register(name, file_loader(name, convert, unwrap=unwrap), config=FileDatasetConfig, summary=summary, detect=detect)
