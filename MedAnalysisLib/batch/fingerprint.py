"""Fingerprints of a batch case (input content, parameters, steps, version, model hashes) and
the ``case.json`` records that tell whether a finished case can be reused."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

from .. import __version__
from ..core.errors import InputError
from .manifest import CaseSpec

CASE_FILE = "case.json"


def modelSha256(spec: str) -> str:
    """SHA-256 identifying a segmentation model: the catalog's hash for a catalog name, else
    the hash of the model file or folder (and of the network config beside safetensors/.pt)."""
    from .. import resources
    from ..core.provenance import path_sha256
    from ..core.segment.models import catalog_entry

    path = Path(spec).expanduser()
    if not path.exists():
        if os.sep not in spec and not path.suffix:
            entry = catalog_entry(resources.modelsDir(), spec)
            return str(entry.get("sha256") or "")
        raise InputError(spec, "model file or folder does not exist")
    digest = hashlib.sha256(path_sha256(path).encode())
    if path.is_file():
        for config in (path.with_suffix(".json"), path.parent / (path.name.split(".")[0] + ".json")):
            if config.is_file() and config != path:
                digest.update(path_sha256(config).encode())
                break
    return digest.hexdigest()


def caseFingerprint(case: CaseSpec, steps: Sequence[str], parameters: dict, registry: dict) -> tuple[str, dict]:
    """(SHA-256, parts): what decides whether a finished case can be reused."""
    from ..core.provenance import path_sha256

    inputs = {}
    for name, path in (("input", case.input), ("followup", case.followup)):
        if path is None:
            continue
        if not Path(path).exists():
            raise InputError(path, f"{name} file does not exist")
        inputs[name] = path_sha256(path)
    hashes = {}
    for name in steps:
        for column, function in registry[name].hashedColumns.items():
            if column in parameters:
                hashes[column] = function(parameters[column])
    parts = {"software": "MedAnalysis", "version": __version__, "steps": list(steps), "parameters": parameters,
             "inputs_sha256": inputs, "hashes_sha256": hashes}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts


def readCaseRecord(folder: Path) -> Optional[dict]:
    try:
        record = json.loads((Path(folder) / CASE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def finishedRecord(folder: Path, fingerprint: str) -> Optional[dict]:
    """The case record when ``folder`` holds a complete result with this fingerprint."""
    record = readCaseRecord(folder)
    if not record or record.get("status") != "ok" or record.get("fingerprint") != fingerprint:
        return None
    if not all((Path(folder) / name).exists() for name in record.get("files", [])):
        return None
    return record
