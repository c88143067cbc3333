"""benchmarks/leaderboard.py on the shipped default world model: scores per editor and protocol
of editing, a failing editor reported as failed, and a second run that resumes from ``--out``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from easyetcon.plugins import set_host

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "leaderboard.py"
CONFIGS = SCRIPT.parent / "intrinsic_configs.json"


def load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("leaderboard", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "leaderboard", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def leaderboard(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path / "cache"))
    set_host(None)  # the installed plugins, as the script sees them
    yield load_script(monkeypatch)
    set_host(None)


@pytest.mark.slow
def test_every_entry_is_scored_failed_or_skipped_and_a_second_run_resumes(leaderboard, tmp_path):
    configs = json.loads(CONFIGS.read_text(encoding="utf-8"))
    configs["ft-l"] = {"no_such_option": 1}  # ft-l cannot be built: it must show as failed, not vanish
    configs_file = tmp_path / "configs.json"
    configs_file.write_text(json.dumps(configs), encoding="utf-8")
    out, table, plot = tmp_path / "board.json", tmp_path / "board.md", tmp_path / "board.png"
    args = ["--model", "default", "--single", "1", "--sequential", "2", "--editors", "ft-m,grace,ft-l,grpo",
            "--threads", "1", "--configs", str(configs_file), "--out", str(out), "--table", str(table), "--plot", str(plot)]

    assert leaderboard.main(args) == 0

    entries = json.loads(out.read_text(encoding="utf-8"))["entries"]
    assert set(entries) == {f"{name}/{mode}" for name in ("ft-m", "grace", "ft-l", "grpo") for mode in ("single", "sequential")}
    for name in ("ft-m", "grace"):
        for mode, edits in (("single", 1), ("sequential", 2)):
            row = entries[f"{name}/{mode}"]
            assert "error" not in row, row.get("error")
            assert row["edits"] == edits and len(row["seconds_per_edit"]) == edits
            assert set(row["scores"]) == {"teacher-forced@1", "generation@1"}
            assert all(0 <= values["reliability"] <= 1 and 0 <= values["locality"] <= 1 for values in row["scores"].values())
            assert row["peak_rss_growth_mib"] >= 0
    assert str(configs_file) in entries["ft-m/single"]["options_source"]
    assert entries["grace/single"]["steps"][0]["initial_radius"] > 0  # calibrated on the tune split
    assert entries["grace/single"]["training_seconds"] is not None
    assert "no_such_option" in entries["ft-l/single"]["error"]
    assert "consolidation only" in entries["grpo/sequential"]["skipped"]

    text = table.read_text(encoding="utf-8")
    assert "| ft-m | sequential | generation@1 |" in text
    assert "| ft-l | single | – | **failed**" in text and "no_such_option" in text
    assert plot.read_bytes().startswith(b"\x89PNG")

    # the same --out again: nothing is edited again, the finished entries are kept as they were
    assert leaderboard.main(args) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["entries"] == entries


def test_an_unknown_editor_is_refused_with_the_names_to_choose_from(leaderboard, tmp_path):
    with pytest.raises(SystemExit, match="choose from .*etcon"):
        leaderboard.main(["--model", "default", "--editors", "no-such-editor", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
