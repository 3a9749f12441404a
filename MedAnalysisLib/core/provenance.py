"""Provenance records attached to every output (node attribute, file sidecar, report)."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

PROVENANCE_ATTRIBUTE = "MedAnalysis.Provenance"
SIDECAR_SUFFIX = ".provenance.json"


def file_sha256(path: "str | os.PathLike", chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, as a hex string."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def path_sha256(path: "str | os.PathLike") -> str:
    """SHA-256 of a file, or of a folder's files (sorted relative names and contents)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(child.relative_to(path).as_posix().encode())
        digest.update(file_sha256(child).encode())
    return digest.hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (for in-memory inputs such as MRML nodes)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def make_provenance(operation: str, parameters: Any, input_checksums: Optional[dict] = None,
                    model_sha256: Optional[str] = None, extra: Optional[dict] = None) -> dict:
    """Provenance dict: version, operation, parameters, input checksums, model hash."""
    from .. import __version__

    record = {
        "software": "MedAnalysis",
        "version": __version__,
        "operation": operation,
        "parameters": _plain(parameters),
        "inputs_sha256": dict(input_checksums or {}),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "research_use_only": True,
    }
    if model_sha256:
        record["model_sha256"] = model_sha256
    if extra:
        record.update(_plain(extra))
    return record


def provenance_json(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


def sidecar_path(output_path: "str | os.PathLike") -> Path:
    return Path(os.fspath(output_path) + SIDECAR_SUFFIX)


def checksums_of(paths: Iterable["str | os.PathLike"]) -> dict:
    return {Path(p).name: path_sha256(p) for p in paths}
