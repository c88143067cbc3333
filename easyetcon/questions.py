"""A question form for any edit request, for editors that train on questions (TPSFT, GRPO).

A request's own question prompts (``metadata["qa_prompts"]``, which the fact world provides) come
first; for every other request :func:`derive_question` builds one:

1. the request's relation is a Wikidata property of :data:`RELATION_QUESTIONS` (CounterFact's
   ``relation_id``, carried on :attr:`~easyetcon.requests.EditRequest.relation` by its loader, or
   a request file's own ``relation``): that relation's question about the subject;
2. the prompt is already a question (ends with ``?``, as ZsRE's are): the prompt itself, which is
   how the evaluator asks it;
3. otherwise the cloze prompt as a question, :data:`GENERIC_QUESTION` (``Question: {prompt}?
   Answer:``): it keeps the prompt's words (no guess about the relation), and its ``Answer:``
   cue puts the answer after one space, where :func:`easyetcon.text.extract_answer` reads it.

The table lives in the core, not in a dataset loader, because the relation id already travels on
the request: a question is derived however the request was made (a loader, a request file, the
Python API), and plugins, which never import each other, all reach it here.
"""

from __future__ import annotations

from easyetcon.requests import EditRequest

#: Wikidata property id -> a question about ``{subject}`` whose answer is the relation's object.
#: Covers every relation of CounterFact (ROME's ``counterfact.json`` and its portability subset).
RELATION_QUESTIONS: dict[str, str] = {
    "P17": "Which country is {subject} located in?",
    "P19": "Where was {subject} born?",
    "P20": "Where did {subject} die?",
    "P27": "What is the country of citizenship of {subject}?",
    "P30": "Which continent is {subject} located in?",
    "P36": "What is the capital of {subject}?",
    "P37": "What is the official language of {subject}?",
    "P39": "What position does {subject} hold?",
    "P101": "What is the field of work of {subject}?",
    "P103": "What is the native language of {subject}?",
    "P106": "What is the occupation of {subject}?",
    "P108": "Who is the employer of {subject}?",
    "P127": "Who owns {subject}?",
    "P131": "Which administrative region is {subject} located in?",
    "P136": "What is the genre of {subject}?",
    "P138": "What is {subject} named after?",
    "P140": "What is the religion of {subject}?",
    "P159": "Where is the headquarters of {subject}?",
    "P176": "Which company manufactures {subject}?",
    "P178": "Who developed {subject}?",
    "P190": "What is the twin city of {subject}?",
    "P264": "What is the record label of {subject}?",
    "P276": "Where is {subject} located?",
    "P364": "What is the original language of {subject}?",
    "P407": "What language is {subject} in?",
    "P413": "What position does {subject} play?",
    "P449": "Which network originally aired {subject}?",
    "P463": "Which organization is {subject} a member of?",
    "P495": "What is the country of origin of {subject}?",
    "P641": "Which sport does {subject} play?",
    "P740": "Where was {subject} founded?",
    "P937": "Where did {subject} work?",
    "P1303": "Which instrument does {subject} play?",
    "P1412": "Which language does {subject} speak?",
}

#: The question form of a relation's question: the fact world's form (``Question: ... Answer:``).
QUESTION_FORM = "Question: {question} Answer:"
#: The question form of a cloze prompt when its relation is not known.
GENERIC_QUESTION = "Question: {prompt}? Answer:"


def derive_question(request: EditRequest) -> str:
    """A question prompt asking for ``request``'s object (see the module's docstring for the order)."""
    relation_question = RELATION_QUESTIONS.get(request.relation or "")
    if relation_question is not None:
        return QUESTION_FORM.format(question=relation_question.format(subject=request.subject))
    prompt = request.prompt.strip()
    if prompt.endswith("?"):
        return prompt
    return GENERIC_QUESTION.format(prompt=prompt)
