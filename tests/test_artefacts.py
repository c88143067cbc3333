"""Verified artefact files: what save_artefact writes, read_artefact gives back or refuses."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from easyetcon.artefacts import read_artefact, save_artefact
from easyetcon.errors import ConfigError

KEY, FORMAT = "example.artefact", "example/1"


def read(path):
    return read_artefact(path, KEY, FORMAT, where=f"option 'file': {path}", what="an example artefact", remedy="retrain it")


def test_round_trip_keeps_document_and_tensors(tmp_path):
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(3.0)}
    save_artefact(tmp_path / "a.safetensors", KEY, {"format": FORMAT, "note": "x"}, tensors)
    document, loaded = read(tmp_path / "a.safetensors")
    assert document["note"] == "x" and set(document["tensors"]) == {"w", "b"}
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temporary file left


def rewrite(path, *, tensors=None, metadata=None):
    with safe_open(str(path), framework="pt") as stream:
        old_metadata, old = stream.metadata(), {k: stream.get_tensor(k) for k in stream.keys()}
    save_file(tensors or old, str(path), metadata=metadata or old_metadata)


@pytest.mark.parametrize("damage, message", [
    ("tensor", "tensor 'w' does not match its digest"),
    ("metadata", "does not match its checksum"),
    ("format", "has format 'other/1'"),
    ("missing", "is not a file"),
    ("garbage", "cannot be read as a safetensors file"),
])
def test_damage_is_refused_naming_the_file_and_the_remedy(tmp_path, damage, message):
    path = tmp_path / "a.safetensors"
    save_artefact(path, KEY, {"format": FORMAT}, {"w": torch.ones(2, 2)})
    if damage == "tensor":
        rewrite(path, tensors={"w": torch.zeros(2, 2)})
    elif damage == "metadata":
        with safe_open(str(path), framework="pt") as stream:
            metadata = stream.metadata()
        rewrite(path, metadata={**metadata, KEY: metadata[KEY].replace("example/1", "example/2")})
    elif damage == "format":
        document = json.dumps({"format": "other/1", "tensors": {}})
        import hashlib

        rewrite(path, metadata={KEY: document, f"{KEY}.sha256": hashlib.sha256(document.encode()).hexdigest()})
    elif damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=message) as error:
        read(path)
    assert str(path) in str(error.value) and str(error.value).endswith("retrain it")
