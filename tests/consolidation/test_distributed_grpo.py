"""`easyetcon edit` under `accelerate launch` with two CPU processes (gloo): ROME then GRPO on
every request; every process ends with the same edited weights and only the main one writes."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed
import yaml

from easyetcon.journal import Journal
from easyetcon.model import load_model
from easyetcon.requests import save_requests
from easyetcon.testing import tiny_torch_model
from tests.intrinsic.helpers import STRONG_VALUES, sectioned, subject_final_requests

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 2

#: Two answers a step, one per process: each samples its own, the rewards are gathered and the
#: gradients all-reduced.
GRPO = {"steps": 2, "group_size": 2, "prompts_per_step": 1, "max_completion_tokens": 6,
        "rewards": {"letter-e": 1.0}, "format_gate": None, "weights": {"layers": [2]}}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="this torch has no torch.distributed gloo backend to run two CPU processes with",
    ),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


#: accelerate launch's flags for each way of running the processes. On a machine without GPUs,
#: --multi_gpu starts them through torchrun and they talk over gloo (--cpu would start one process
#: unless MPI is set up); DeepSpeed's CPU accelerator talks over gloo too.
LAUNCHES = {
    "ddp": ["--multi_gpu"],
    "deepspeed-zero-2": ["--use_deepspeed", "--zero_stage", "2"],
}


def launch_command(launch: str, script_args: list[str]) -> list[str]:
    """What the docs give users, with the tests' script in front of the CLI."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", *LAUNCHES[launch], "--num_processes", str(PROCESSES),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(ROOT / "tests" / "consolidation" / "distributed_edit.py"), *script_args,
    ]


@pytest.fixture
def workspace(tmp_path):
    model, tokenizer = tiny_torch_model("llama")
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    requests = [r.model_copy(update={"metadata": {"qa_prompts": [f"Question: {r.prompt}? Answer:"]}})
                for r in subject_final_requests()]
    save_requests(requests, tmp_path / "requests.json")
    spec = {"model": str(tmp_path / "base"), "mode": "sequential", "chain": [
        {"editor": "rome", **sectioned({**STRONG_VALUES, "layer": 0})},
        {"editor": "grpo", **GRPO},
    ]}
    (tmp_path / "chain.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "digests").mkdir()
    return tmp_path


@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_two_processes_end_with_the_same_weights_and_one_journal(workspace, launch):
    if launch.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    base_model = load_model(workspace / "base")
    base, grpo_trained = base_model.state_hash(), base_model.adapter.weight_name("mlp_out", 2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU processes even where there are GPUs
    finished = subprocess.run(
        launch_command(launch, [str(workspace / "digests"), "edit", "--chain", str(workspace / "chain.yaml"),
                        "--data", str(workspace / "requests.json"), "--out", str(workspace / "run")]),
        env=env, cwd=workspace, capture_output=True, text=True, timeout=600,
    )
    output = finished.stdout + finished.stderr
    easyetcon_errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert finished.returncode == 0, "\n".join(easyetcon_errors) or output[-4000:]
    assert f"all {PROCESSES} processes ended with the same weights" in output

    digests = {path.name: path.read_text() for path in (workspace / "digests").iterdir()}
    assert sorted(digests) == [f"{rank}.txt" for rank in range(PROCESSES)]
    assert len(set(digests.values())) == 1, digests
    (edited,) = set(digests.values())
    assert edited != base

    # the main process alone wrote: one run folder, one journal, no staging left beside it
    assert sorted(p.name for p in workspace.iterdir()) == ["base", "chain.yaml", "digests", "requests.json", "run"]
    assert sorted(p.name for p in (workspace / "run").iterdir()) == ["journal", "model"]
    assert [p.parent.name for p in workspace.rglob("journal.jsonl")] == ["journal"]

    journal = Journal.open(workspace / "run" / "journal")
    entries = journal.entries("applied")
    assert [e["editor"] for e in entries] == ["rome", "grpo"] * 2
    for entry in entries[1::2]:  # each GRPO step trained (an empty split of its prompts would not)
        assert list(journal.record(entry["position"]).weights.changes) == [grpo_trained]
    saved = load_model(workspace / "run" / "model")
    assert saved.state_hash() == edited
    journal.check_current(saved)
    replayed = load_model(workspace / "base")
    journal.replay(replayed)
    assert replayed.state_hash() == edited
