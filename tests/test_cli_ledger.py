"""The command line's ledger promises off the happy path: locks, crashes, tampering, full disks."""

import os

import pytest

from easyetcon.cli import UNDO_BACKUP, UNDO_STAGING
from easyetcon.journal import Journal
from easyetcon.files import STAGING_PREFIX, locked_folder, staging_folder
from easyetcon.model import load_model
from tests.test_cli import run, workspace  # noqa: F401  (fixture)


def edit(workspace, out="run"):
    return run("edit", "--chain", workspace / "chain.yaml", "--data", workspace / "requests.json", "--out", workspace / out)


def test_a_second_run_into_a_locked_output_folder_is_refused(workspace):
    with locked_folder(workspace / "run"):
        result = edit(workspace)
    assert result.exit_code == 2 and "another easyetcon command is writing to" in result.output
    assert not (workspace / "run").exists()  # the refused run created nothing


def test_staging_left_by_a_killed_run_is_removed_and_a_live_one_is_kept(workspace):
    dead = workspace / f"{STAGING_PREFIX}run-99999"
    (dead / "run").mkdir(parents=True)
    with staging_folder(workspace, "other") as alive:
        result = edit(workspace)
        assert alive.exists()
    assert result.exit_code == 0, result.output
    assert "left behind by an interrupted run" in result.output and not dead.exists()
    assert sorted(p.name for p in (workspace / "run").iterdir()) == ["journal", "model"]


def test_undo_last_must_be_positive(workspace):
    assert edit(workspace).exit_code == 0
    result = run("undo", workspace / "run", "--last", "-1")
    assert result.exit_code == 2 and "--last" in result.output


def test_undo_of_an_eval_run_says_there_is_no_saved_model(workspace):
    assert edit(workspace).exit_code == 0
    os.rename(workspace / "run" / "model", workspace / "elsewhere")
    result = run("undo", workspace / "run")
    assert result.exit_code == 2 and "no saved model" in result.output


def test_undo_refuses_a_saved_model_that_is_not_what_the_journal_describes(workspace):
    assert edit(workspace).exit_code == 0
    model = load_model(workspace / "base")  # the unedited model saved over the edited one
    model.save_pretrained(workspace / "run" / "model")
    before = (workspace / "run" / "model" / "model.safetensors").read_bytes()
    result = run("undo", workspace / "run")
    assert result.exit_code == 2 and "differ" in result.output and "Nothing was changed" in result.output
    assert (workspace / "run" / "model" / "model.safetensors").read_bytes() == before


def test_flipped_bytes_in_a_record_give_one_line_and_change_nothing(workspace):
    assert edit(workspace).exit_code == 0
    record = workspace / "run" / "journal" / "records" / "00001" / "base.safetensors"  # toy-shift's first step
    data = bytearray(record.read_bytes())
    data[-3] ^= 0x10
    record.write_bytes(bytes(data))
    before = (workspace / "run" / "model" / "model.safetensors").read_bytes()
    result = run("undo", workspace / "run")
    assert result.exit_code == 2 and "checksum" in result.output and "Traceback" not in result.output
    assert (workspace / "run" / "model" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("crash_after", ["backup", "swap"])
def test_an_undo_cut_off_between_its_renames_is_settled_by_the_next_undo(workspace, crash_after):
    assert edit(workspace).exit_code == 0
    run_dir = workspace / "run"
    base = load_model(workspace / "base").state_hash()
    edited = load_model(run_dir / "model").state_hash()
    # Reproduce the crash points of undo's swap by hand.
    restored = load_model(workspace / "base")
    restored.save_pretrained(run_dir / UNDO_STAGING / "model")
    os.rename(run_dir / "model", run_dir / UNDO_BACKUP)
    if crash_after == "swap":
        os.rename(run_dir / UNDO_STAGING / "model", run_dir / "model")
    result = run("undo", run_dir, "--last", "1")
    assert result.exit_code == 0, result.output
    assert "interrupted undo" in result.output
    assert not (run_dir / UNDO_BACKUP).exists() and not (run_dir / UNDO_STAGING).exists()
    # The journal still said every step was applied, so the edited model was put back before
    # the newest step was undone, and the saved model is what the journal now describes.
    journal = Journal.open(run_dir / "journal")
    assert [e["status"] for e in journal.entries()][-2:] == ["applied", "undone"]
    journal.check_current(load_model(run_dir / "model"))
    assert load_model(run_dir / "model").state_hash() not in (edited, base)
    run("undo", run_dir)
    assert load_model(run_dir / "model").state_hash() == base


def test_a_full_disk_while_saving_is_one_clear_error_and_leaves_nothing(workspace, monkeypatch):
    from easyetcon.model import EditableModel

    def full_disk(self, directory):
        raise OSError(28, "No space left on device", str(directory))

    monkeypatch.setattr(EditableModel, "save_pretrained", full_disk)
    result = edit(workspace)
    assert result.exit_code == 2
    assert "No space left on device" in result.output and "free some space" in result.output
    assert not (workspace / "run").exists()
    assert not list(workspace.glob(f"{STAGING_PREFIX}*"))


def test_sigterm_rolls_back_and_leaves_no_staging_or_output(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from easyetcon.requests import save_requests
    from easyetcon.testing import tiny_requests, tiny_torch_model

    model, tokenizer = tiny_torch_model("llama")
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    save_requests(tiny_requests(), tmp_path / "requests.json")
    (tmp_path / "chain.yaml").write_text("chain:\n  - editor: ft-m\n    steps: 10000\n    learning_rate: 0.0001\n")
    command = [sys.executable, "-c", "from easyetcon.cli import main; main()", "edit", "--model", str(tmp_path / "base"),
               "--chain", str(tmp_path / "chain.yaml"), "--data", str(tmp_path / "requests.json"), "--out", str(tmp_path / "run")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(f"{STAGING_PREFIX}*/run/journal/requests.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.2)  # the chain has started its first step
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()[-2000:]
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*")) and not (tmp_path / "run").exists()
    assert "Traceback" not in stderr.decode()
