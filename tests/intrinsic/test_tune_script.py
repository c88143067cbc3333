"""benchmarks/intrinsic_tune.py keeps the default world's test split out of tuning."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def tune_script():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("intrinsic_tune", BENCHMARKS / "intrinsic_tune.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_default_worlds_test_split_is_refused(tune_script, tmp_path):
    from easyetcon_world import has_default_model

    if not has_default_model():
        pytest.skip("the fact world's shipped model is not available")
    with pytest.raises(SystemExit, match="default world.*sibling"):
        tune_script.main(["--editors", "ft-m", "--split", "test", "--out", str(tmp_path / "out.json")])
    assert not (tmp_path / "out.json").exists()


def test_a_sibling_world_is_not_the_default_one(tune_script):
    from easyetcon_world import build_world

    assert tune_script.is_default_world(build_world("default", 0))
    assert not tune_script.is_default_world(build_world("default", 1))
    assert not tune_script.is_default_world(build_world("tiny", 0))


def test_configs_follow_the_shipped_model_unless_given(tune_script, tmp_path):
    common = sys.modules["intrinsic_common"]
    parser = common.argparse.ArgumentParser()
    common.common_arguments(parser, edits=1)
    assert common.parse_run_arguments(parser, ["--out", "x"]).configs == common.DEFAULT_CONFIGS
    assert common.parse_run_arguments(parser, ["--model", "wide", "--out", "x"]).configs.name == "intrinsic_configs_wide.json"
    given = tmp_path / "mine.json"
    assert common.parse_run_arguments(parser, ["--model", "wide", "--configs", str(given), "--out", "x"]).configs == given
