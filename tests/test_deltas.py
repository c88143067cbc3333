"""Edit exports: `easyetcon export RUN --out FILE` and `easyetcon apply MODEL FILE --out DIR`
give back the run's model bit for bit, compactly, and refuse a wrong base or a damaged file."""

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from easyetcon.chain import EditChain
from easyetcon.cli import cli
from easyetcon.deltas import (
    CHECK_KEY,
    DOCUMENT_KEY,
    MEMORY_FILE,
    _decode_weight,
    _encode_weight,
    apply_export,
    build_export,
    load_applied,
    read_export,
    rebuild_factored,
)
from easyetcon.errors import ExportError
from easyetcon.journal import Journal
from easyetcon.model import load_model
from easyetcon.plugins import PluginHost, set_host
from easyetcon.records import tensor_digest
from easyetcon.requests import save_requests
from easyetcon.testing import tiny_model, tiny_requests, tiny_torch_model


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def succeeds(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def same_model(a, b) -> bool:
    return load_model(a, dtype="auto").state_hash() == load_model(b, dtype="auto").state_hash()


def save_tiny(folder, seed=0):
    model, tokenizer = tiny_torch_model("llama", seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- tiny models and the toy plugins: fast -----------------------------------------------------


@pytest.fixture
def tiny(tmp_path, toy_host):
    save_tiny(tmp_path / "base")
    save_requests(tiny_requests(), tmp_path / "requests.json")
    chains = {
        "factored": "chain:\n  - editor: toy-shift\n    low_rank: true\n",
        "dense": "chain:\n  - editor: toy-shift\n",
        "hybrid": "chain:\n  - editor: toy-notes\n  - editor: toy-shift\n    low_rank: true\n",
    }
    for name, text in chains.items():
        (tmp_path / f"{name}.yaml").write_text(f"model: {tmp_path / 'base'}\n{text}")
    return tmp_path


def tiny_run(tiny, chain, name="run"):
    succeeds("edit", "--chain", tiny / f"{chain}.yaml", "--data", tiny / "requests.json", "--out", tiny / name)
    return tiny / name


def test_a_tiny_run_round_trips_bit_exact(tiny):
    for chain in ("factored", "dense"):
        run_dir = tiny_run(tiny, chain, f"run-{chain}")
        exported = succeeds("export", run_dir, "--out", tiny / f"{chain}.safetensors")
        assert "from 3 applied step(s) (3 request(s))" in exported.output
        applied = succeeds("apply", tiny / "base", tiny / f"{chain}.safetensors", "--out", tiny / f"applied-{chain}")
        assert "every weight matches its final digest" in applied.output
        assert same_model(tiny / f"applied-{chain}" / "model", run_dir / "model")
        forms = {info["form"] for info in read_export(tiny / f"{chain}.safetensors").weights.values()}
        assert forms == ({"factors"} if chain == "factored" else {"full"})


def test_a_different_base_is_refused_and_nothing_is_written(tiny):
    run_dir = tiny_run(tiny, "factored")
    succeeds("export", run_dir, "--out", tiny / "edits.safetensors")
    base_hash = read_export(tiny / "edits.safetensors").base_model
    save_tiny(tiny / "other", seed=1)
    for model in (tiny / "other", run_dir / "model"):  # another model; the run's own edited model
        result = run("apply", model, tiny / "edits.safetensors", "--out", tiny / "applied")
        assert result.exit_code == 2
        assert f"this export was made for base {base_hash[:16]}; '{model}' has " in result.output
        assert not (tiny / "applied").exists()
    assert not [p.name for p in tiny.iterdir() if p.name.startswith(".easyetcon-staging")]


def rewrite_metadata(path, target, change):
    """Write ``path``'s tensors to ``target`` with ``change(document) -> (document, recompute_checksum)``."""
    with safe_open(str(path), framework="pt") as stream:
        metadata = stream.metadata()
        tensors = {name: stream.get_tensor(name) for name in stream.keys()}
    document, recompute = change(json.loads(metadata[DOCUMENT_KEY]))
    text = json.dumps(document)
    check = hashlib.sha256(text.encode()).hexdigest() if recompute else metadata[CHECK_KEY]
    save_file(tensors, str(target), metadata={DOCUMENT_KEY: text, CHECK_KEY: check})


def test_a_damaged_or_edited_export_is_refused(tiny):
    run_dir = tiny_run(tiny, "factored")
    good = tiny / "edits.safetensors"
    succeeds("export", run_dir, "--out", good)
    data = bytearray(good.read_bytes())
    header = int.from_bytes(data[:8], "little")

    flipped = tiny / "flipped.safetensors"
    damaged = bytearray(data)
    damaged[8 + header + 5] ^= 0x10  # a byte of the first tensor's data
    flipped.write_bytes(bytes(damaged))

    truncated = tiny / "truncated.safetensors"
    truncated.write_bytes(bytes(data[:-8]))

    edited = tiny / "edited.safetensors"  # the metadata changed, its checksum not
    rewrite_metadata(good, edited, lambda d: ({**d, "dtype": "bfloat16"}, False))

    forged = tiny / "forged.safetensors"  # a consistent file whose weights are not the run's
    def other_final(document):
        name = next(iter(document["weights"]))
        document["weights"][name]["final"] = "0" * 64
        return document, True
    rewrite_metadata(good, forged, other_final)

    inconsistent = tiny / "inconsistent.safetensors"  # checksummed, but its ranks do not fit its factors
    def more_ranks(document):
        next(iter(document["weights"].values()))["ranks"].append(1)
        return document, True
    rewrite_metadata(good, inconsistent, more_ranks)

    not_an_export = run_dir / "model" / "model.safetensors"
    expected = {
        inconsistent: "does not hold what its metadata describes",
        flipped: "do not match their digests",
        truncated: "cannot be read as an easyetcon edit export",
        edited: "does not match its checksum",
        forged: "does not reproduce the run's final digest",
        not_an_export: "is not an easyetcon edit export",
    }
    for path, message in expected.items():
        result = run("apply", tiny / "base", path, "--out", tiny / "applied")
        assert result.exit_code == 2, (path, result.output)
        assert message in " ".join(result.output.split()), (path, result.output)
        assert not (tiny / "applied").exists()
    succeeds("apply", tiny / "base", good, "--out", tiny / "applied")  # the good file still applies


def test_undone_steps_are_not_in_the_export(tiny):
    run_dir = tiny_run(tiny, "factored")
    succeeds("undo", run_dir, "--last", "1")
    succeeds("export", run_dir, "--out", tiny / "two.safetensors")
    export = read_export(tiny / "two.safetensors")
    assert export.document["run"]["steps"] == 2 and export.document["run"]["requests"] == 2
    assert [info["ranks"] for info in export.weights.values()] == [[1, 1]]
    succeeds("apply", tiny / "base", tiny / "two.safetensors", "--out", tiny / "applied")
    assert same_model(tiny / "applied" / "model", run_dir / "model")

    succeeds("undo", run_dir)
    result = run("export", run_dir, "--out", tiny / "none.safetensors")
    assert result.exit_code == 2 and "nothing to export: every step" in result.output
    assert not (tiny / "none.safetensors").exists()


def test_export_refuses_a_saved_model_that_does_not_match_its_journal(tiny):
    run_dir = tiny_run(tiny, "factored")
    model = load_model(run_dir / "model")
    with torch.no_grad():
        model.parameter(model.adapter.weight_name("mlp_out", 1)).add_(1.0)
    model.save_pretrained(run_dir / "model")
    result = run("export", run_dir, "--out", tiny / "edits.safetensors")
    assert result.exit_code == 2
    assert "is not the state its journal describes" in result.output and "Nothing was written" in result.output
    assert not (tiny / "edits.safetensors").exists()


def test_export_and_apply_refuse_bad_arguments(tiny):
    run_dir = tiny_run(tiny, "factored")
    (tiny / "taken.safetensors").write_text("mine")
    result = run("export", run_dir, "--out", tiny / "taken.safetensors")
    assert result.exit_code == 2 and "exists; choose a new file" in result.output
    assert (tiny / "taken.safetensors").read_text() == "mine"
    result = run("export", tiny / "base", "--out", tiny / "edits.safetensors")
    assert result.exit_code == 2 and "has no journal/ folder" in result.output
    result = run("export", run_dir, "--out", tiny / "missing" / "edits.safetensors")
    assert result.exit_code == 2 and "does not exist" in result.output

    succeeds("export", run_dir, "--out", tiny / "edits.safetensors")
    (tiny / "full").mkdir()
    (tiny / "full" / "keep.txt").write_text("mine")
    result = run("apply", tiny / "base", tiny / "edits.safetensors", "--out", tiny / "full")
    assert result.exit_code == 2 and "not empty" in result.output
    assert [p.name for p in (tiny / "full").iterdir()] == ["keep.txt"]


def test_a_hybrid_run_brings_back_its_weights_and_its_memory(tiny, toy_host):
    run_dir = tiny_run(tiny, "hybrid")
    exported = succeeds("export", run_dir, "--out", tiny / "edits.safetensors")
    assert "1 weight(s) (1 factored, 0 whole) and 1 memory store(s) (3 entries)" in " ".join(exported.output.split())
    succeeds("apply", tiny / "base", tiny / "edits.safetensors", "--out", tiny / "applied")
    assert (tiny / "applied" / MEMORY_FILE).exists()
    assert same_model(tiny / "applied" / "model", run_dir / "model")

    request = tiny_requests()[0]
    applied = load_applied(tiny / "applied")
    journalled = load_model(run_dir / "model")
    Journal.open(run_dir / "journal").restore_memories(journalled, toy_host.registry)
    rewritten = applied.rewrite_prompts([request.prompt])
    assert rewritten == journalled.rewrite_prompts([request.prompt]) != [request.prompt]
    assert request.target_new in rewritten[0]
    assert load_model(tiny / "applied" / "model").rewrite_prompts([request.prompt]) == [request.prompt]  # the weights alone


def test_weights_past_a_journal_checkpoint_still_export_factored(toy_host, tmp_path):
    model = tiny_model(registry=toy_host.registry)
    base = model.state_hash()
    requests = [r.model_copy(update={"case_id": f"c{i}"}) for i, r in enumerate(tiny_requests() * 2)]
    journal = Journal(tmp_path / "j", checkpoint_every=2)
    EditChain([("toy-shift", {"low_rank": True})]).apply(model, requests, journal=journal)
    name = model.adapter.weight_name("mlp_out", 0)
    assert [e["weights"][name]["form"] for e in journal.entries()] == ["factors", "full"] * 3

    export = build_export(Journal.open(tmp_path / "j"), model)
    assert export.weights[name]["form"] == "factors" and export.weights[name]["ranks"] == [1] * 6
    export.save(tmp_path / "edits.safetensors")
    fresh = tiny_model(registry=toy_host.registry)
    assert fresh.state_hash() == base
    assert apply_export(fresh, read_export(tmp_path / "edits.safetensors"), registry=toy_host.registry) == [name]
    assert fresh.state_hash() == model.state_hash()


def test_entries_a_rebuild_misses_are_corrected_and_too_many_make_the_value_whole():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(64, 48, generator=generator)
    left, right = torch.randn(64, 2, generator=generator, dtype=torch.float64), torch.randn(2, 48, generator=generator, dtype=torch.float64)
    final = rebuild_factored(base, left, right, [1, 1])
    final.view(-1)[[3, 700, 2000]] += 1.0  # entries the factors do not explain
    info, tensors = _encode_weight("w", base, final, [(left[:, :1], right[:1]), (left[:, 1:], right[1:])])
    assert info["form"] == "factors" and info["corrections"] == 3
    assert tensor_digest(_decode_weight("w", info, base, tensors)) == tensor_digest(final)

    final += 1.0  # now every entry differs: the whole value is smaller
    info, tensors = _encode_weight("w", base, final, [(left, right)])
    assert info["form"] == "full"
    assert tensor_digest(_decode_weight("w", info, base, tensors)) == tensor_digest(final)


def test_apply_export_leaves_the_model_as_it_was_on_a_wrong_base(toy_host, tmp_path):
    model = tiny_model(registry=toy_host.registry)
    EditChain([("toy-shift", {"low_rank": True})]).apply(model, tiny_requests(), journal=tmp_path / "j")
    export = build_export(Journal.open(tmp_path / "j"), model)
    other = tiny_model(seed=1, registry=toy_host.registry)
    before = other.state_hash()
    with pytest.raises(ExportError, match="this export was made for base"):
        apply_export(other, export, registry=toy_host.registry)
    assert other.state_hash() == before


# ---- the shipped world model and the real editors ------------------------------------------------


@pytest.fixture
def world(tmp_path, tmp_path_factory, monkeypatch):
    """The installed plugins, the shipped `default` model and 3 of its test edits."""
    monkeypatch.delenv("EASYETCON_BLOCK_PLUGINS", raising=False)
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path_factory.getbasetemp() / "easyetcon-cache"))
    set_host(PluginHost())
    try:
        from easyetcon_world import has_shipped_model, load_world, make_edit_requests, shipped_model_path
    except ImportError:
        pytest.skip("the world plugin is not installed")
    if not has_shipped_model("default"):
        pytest.skip("the shipped world model is not available")
    requests = make_edit_requests(load_world(shipped_model_path("default")), "test", n=3)
    save_requests(requests, tmp_path / "requests.json")
    yield tmp_path, requests
    set_host(None)


WORLD_CHAINS = {
    "rome": ("chain:\n  - editor: rome\n    layer: 0\n    use_covariance: false\n    value: {steps: 20}\n", "sequential"),
    "memit": (
        "chain:\n  - editor: memit\n    layers: [0, 1]\n    value: {steps: 20}\n"
        "    statistics: {source: world, samples: 100, progress: false}\n", "batch",
    ),
    "ft-m": ("chain:\n  - editor: ft-m\n    layers: [3]\n    steps: 5\n", "sequential"),
}


def world_run(folder, editor):
    spec, mode = WORLD_CHAINS[editor]
    (folder / f"{editor}.yaml").write_text(f"model: default\n{spec}")
    succeeds("edit", "--chain", folder / f"{editor}.yaml", "--data", folder / "requests.json", "--mode", mode, "--out", folder / editor)
    return folder / editor


@pytest.mark.parametrize("editor", sorted(WORLD_CHAINS))
def test_world_model_edits_round_trip_bit_exact(world, editor):
    folder, _ = world
    run_dir = world_run(folder, editor)
    succeeds("export", run_dir, "--out", folder / "edits.safetensors")
    succeeds("apply", "default", folder / "edits.safetensors", "--out", folder / "applied")
    assert same_model(folder / "applied" / "model", run_dir / "model")

    export = read_export(folder / "edits.safetensors")
    size = (folder / "edits.safetensors").stat().st_size
    if editor == "ft-m":  # a dense change travels whole
        assert {info["form"] for info in export.weights.values()} == {"full"}
        assert size > export.dense_bytes()
    else:  # ROME's rank-one edits one after another; MEMIT's batch as one rank-3 update per layer
        ranks = [[1, 1, 1]] if editor == "rome" else [[3], [3]]
        assert [info["ranks"] for info in export.weights.values()] == ranks
        assert size < export.dense_bytes() / 5


def test_a_memory_run_exports_and_the_applied_model_answers_with_it(world):
    folder, requests = world
    (folder / "memory.yaml").write_text("model: default\nchain:\n  - editor: retrieval-memory\n")
    succeeds("edit", "--chain", folder / "memory.yaml", "--data", folder / "requests.json", "--out", folder / "run")
    exported = succeeds("export", folder / "run", "--out", folder / "memory.safetensors")
    assert "1 memory store(s) (3 entries)" in exported.output
    succeeds("apply", "default", folder / "memory.safetensors", "--out", folder / "applied")

    applied = load_applied(folder / "applied")
    weights_only = load_model(folder / "applied" / "model")
    assert all(applied.predicts(r.prompt, r.target_new) for r in requests)
    assert not any(weights_only.predicts(r.prompt, r.target_new) for r in requests)
