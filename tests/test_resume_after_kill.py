"""Fault injection: a lifelong run killed (``os._exit``, as kill -9) at several points and then
resumed gives bit for bit the weights and the scores of a run that was never interrupted.

The chain is AlphaEdit with generated prefixes and model-sampled key statistics: everything an
editor derives from the model at first use, plus state carried from edit to edit. The resumed
process gets an empty statistics cache, so it must derive them from the unedited model again.
UltraEdit, whose carried state is its lifelong normaliser, is killed between steps too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from easyetcon import EditRequest, Probe
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model

STATISTICS = {"source": "model-samples", "samples": 16, "max_length": 16, "batch_size": 16, "progress": False}
CHAIN = [("alphaedit", {
    "key": {"prefixes": 2, "prefix_source": "generated", "prefix_length": 4},
    "value": {"steps": 8, "weight_decay": 0.0, "kl_factor": 0.0, "clamp_norm_factor": 1e4, "learning_rate": 0.5},
    "statistics": STATISTICS, "layers": [0, 1],
})]
#: UltraEdit carries its lifelong normaliser from edit to edit (journaled moments, merged again on resume).
CHAINS = {"alphaedit": CHAIN, "ultraedit": [("ultraedit", {"learning_rate": 0.01, "layers": [0, 1, 2], "module": "mlp_out"})]}
OPTIONS = {"schedule": "every:2", "protocols": ("teacher-forced",), "max_new_tokens": 4, "progress": False, "report": False}
# Whether an edit holds does not matter here, only that both runs compute the same.
pytestmark = pytest.mark.filterwarnings("ignore::easyetcon.locate.values.EditNotReachedWarning")

SUBJECTS = ["Danielle Darrieux", "Eiffel Tower", "Toko Yasuda", "Apple", "Berlin"]


def stream() -> list[EditRequest]:
    return [
        EditRequest(
            prompt=f"The mother tongue of {subject}", subject=subject, target_new=target, case_id=f"k{i}",
            locality=[Probe(prompt="The mother tongue of Oslo", answer="Oslo")],
        )
        for i, (subject, target) in enumerate(zip(SUBJECTS, ["Paris", "guitar", "Rome", "Lima", "Cairo"]))
    ]


CHILD = r'''
import os, sys
import easyetcon.journal as journal_module
import easyetcon_eval.lifelong as lifelong_module
from easyetcon.testing import tiny_model
from easyetcon_eval import run_lifelong
from tests.test_resume_after_kill import CHAINS, OPTIONS, stream

point, count, out, chain = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
calls = [0]

def die():
    os._exit(137)

def counting(original, before_dying):
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == count:
            before_dying(original, *args, **kwargs)
            die()
        return original(*args, **kwargs)
    return wrapped

if point == "between-steps":  # the step's record and line are written, the next step never starts
    journal_module.Journal.append = counting(journal_module.Journal.append, lambda f, *a, **k: f(*a, **k))
elif point == "record-write":  # one file of the record's folder written, then killed
    journal_module._save_tensors = counting(journal_module._save_tensors, lambda f, *a, **k: f(*a, **k))
elif point == "index-line":  # half of a step's index line reaches the disk
    def half_line(f, path, payload):
        data = journal_module.json.dumps(journal_module._checked(payload)).encode()
        with open(path, "ab") as stream:
            stream.write(data[: len(data) // 2])
    journal_module._append_line = counting(journal_module._append_line, half_line)
elif point == "state-file":  # killed while lifelong.json's temporary file is half written
    def half_state(f, path, data):
        path.with_name(f".{path.name}.{os.getpid()}.tmp").write_text(journal_module.json.dumps(data)[:20])
    lifelong_module.write_json_atomic = counting(lifelong_module.write_json_atomic, half_state)
run_lifelong(tiny_model("llama"), CHAINS[chain], stream(), out_dir=out, **OPTIONS)
sys.exit(3)  # the kill point was never reached
'''


def final_state(model, result):
    return model.state_hash(), [{k: v for k, v in p.items()} for p in result.curve]


def uninterrupted_run(tmp_path_factory, monkeypatch, chain):
    from easyetcon_eval import run_lifelong

    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path_factory.mktemp("cache-clean")))
    model = tiny_model("llama", registry=get_host().registry)
    result = run_lifelong(model, CHAINS[chain], stream(), out_dir=tmp_path_factory.mktemp("clean"), **OPTIONS)
    return final_state(model, result)


@pytest.fixture
def uninterrupted(tmp_path_factory, monkeypatch):
    return uninterrupted_run(tmp_path_factory, monkeypatch, "alphaedit")


def killed_then_resumed(point, count, chain, tmp_path, monkeypatch):
    from easyetcon_eval import run_lifelong

    out = tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "EASYETCON_CACHE": str(tmp_path / "cache-killed"), "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", CHILD, point, str(count), str(out), chain], env=env, cwd=root, capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr[-3000:]

    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path / "cache-resumed"))  # statistics derived again
    model = tiny_model("llama", registry=get_host().registry)
    result = run_lifelong(model, CHAINS[chain], stream(), out_dir=out, **OPTIONS)
    assert result.resumed_at > 0  # the kill came after at least one complete edit
    return final_state(model, result)


@pytest.mark.slow
@pytest.mark.parametrize("point,count", [("between-steps", 2), ("record-write", 8), ("index-line", 9), ("state-file", 2)])
def test_a_killed_run_resumes_bit_for_bit(point, count, uninterrupted, tmp_path, monkeypatch):
    assert killed_then_resumed(point, count, "alphaedit", tmp_path, monkeypatch) == uninterrupted


@pytest.mark.slow
def test_a_killed_ultraedit_run_resumes_with_its_normaliser_bit_for_bit(tmp_path_factory, tmp_path, monkeypatch):
    expected = uninterrupted_run(tmp_path_factory, monkeypatch, "ultraedit")
    assert killed_then_resumed("between-steps", 3, "ultraedit", tmp_path, monkeypatch) == expected
