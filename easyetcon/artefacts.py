"""Trained artefacts (a MEND hypernetwork, a SERAC scope classifier, a third party's) as one
verified safetensors file: a JSON document in the metadata with its own checksum and a digest of
every tensor, written to a temporary file and renamed into place, and checked in full on read."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from easyetcon.errors import ConfigError
from easyetcon.records import tensor_digest


def save_artefact(path: str | Path, key: str, document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``tensors`` and ``document`` (plus ``"tensors"``: each tensor's digest) to ``path``
    under the metadata entry ``key`` and its checksum ``key.sha256``."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    document = {**document, "tensors": {name: tensor_digest(t) for name, t in tensors.items()}}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    metadata = {key: text, f"{key}.sha256": hashlib.sha256(text.encode()).hexdigest()}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def read_artefact(
    path: str | Path, key: str, expected_format: str, *, where: str, what: str, remedy: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(document, tensors)`` of a file :func:`save_artefact` wrote, with its metadata checked
    against its checksum, its ``format`` against ``expected_format`` and every tensor against its
    digest. Anything else is a :class:`~easyetcon.errors.ConfigError` that starts with ``where``
    (the option and file), says what is wrong and ends with ``remedy``."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise ConfigError(f"{where} is not a file; {remedy}")
    try:
        with safe_open(str(path), framework="pt") as stream:
            metadata = stream.metadata() or {}
            tensors = {name: stream.get_tensor(name) for name in stream.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ConfigError(f"{where} cannot be read as a safetensors file ({error}); {remedy}") from error
    text, check = metadata.get(key), metadata.get(f"{key}.sha256")
    if text is None:
        raise ConfigError(f"{where} is not {what} (no {key!r} metadata); {remedy}")
    if hashlib.sha256(text.encode()).hexdigest() != check:
        raise ConfigError(f"{where} is damaged: its metadata does not match its checksum; {remedy}")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where}: its metadata is not JSON ({error}); {remedy}") from error
    if not isinstance(document, dict) or document.get("format") != expected_format:
        found = document.get("format") if isinstance(document, dict) else None
        raise ConfigError(f"{where} has format {found!r}, expected {expected_format!r}; {remedy}")
    expected = document.get("tensors")
    if not isinstance(expected, dict) or set(tensors) != set(expected):
        raise ConfigError(f"{where} holds tensors {sorted(tensors)}, expected {sorted(expected or {})}; {remedy}")
    damaged = [name for name in sorted(tensors) if tensor_digest(tensors[name]) != expected[name]]
    if damaged:
        raise ConfigError(f"{where} is damaged: tensor {damaged[0]!r} does not match its digest; {remedy}")
    return document, tensors
