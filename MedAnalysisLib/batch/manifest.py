"""Manifest of a batch run: :class:`CaseSpec` rows, reading and validating the CSV (case ids,
known columns, operator-only columns) and the effective parameters of a case.

See :mod:`MedAnalysisLib.batch` for the manifest columns.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core.errors import InputError
from ..core.parameters import parse_bool

BASE_COLUMNS = ("case_id", "input", "followup")
# Permissions to run code come from the operator (command line), never from a manifest cell.
OPERATOR_ONLY_COLUMNS = ("trusted",)
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """One manifest row: absolute input paths and the row's non-empty parameter cells."""

    caseId: str
    input: str
    followup: Optional[str]
    parameters: dict
    row: int


def parseFlag(value: Any, subject: str) -> bool:
    """true/false cell of the manifest (1/0, yes/no, on/off; empty is false)."""
    try:
        return parse_bool(str(value or ""))
    except ValueError:
        raise InputError(subject, f"expected true or false, got '{value}'") from None


def knownColumns(registry: dict) -> list:
    columns = list(BASE_COLUMNS)
    for step in registry.values():
        columns.extend(c for c in step.columns if c not in columns)
    return columns


def readManifest(path: "str | os.PathLike", registry: Optional[dict] = None) -> list[CaseSpec]:
    """Cases of a manifest CSV (see the module docstring); InputError names the manifest and row."""
    if registry is None:
        from .steps import STEPS

        registry = STEPS
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest file does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            header = [(name or "").strip() for name in (reader.fieldnames or [])]
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(path, f"not a readable CSV manifest ({error})") from None
    for required in ("case_id", "input"):
        if required not in header:
            raise InputError(path, f"manifest needs the columns case_id,input[,followup]; '{required}' is missing")
    known = knownColumns(registry)
    for name in header:
        if name in OPERATOR_ONLY_COLUMNS:
            raise InputError(path, f"column '{name}' is not allowed in a manifest: permission to run model code "
                                   f"comes from the operator (medanalysis batch --set {name}=1)")
        if name not in known:
            raise InputError(path, f"unknown column '{name}' (known: {', '.join(known)})")
    base = path.resolve().parent
    cases, seen = [], {}
    for line, row in rows:
        cells = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not any(cells.values()) or cells.get("case_id", "").startswith("#"):
            continue
        caseId = cells.get("case_id", "")
        if not _CASE_ID.match(caseId):
            raise InputError(path, f"line {line}: case_id '{caseId}' must be 1-128 letters, digits, '.', '_' or '-' "
                                   "and start with a letter or digit")
        if caseId in seen:
            raise InputError(path, f"line {line}: case_id '{caseId}' repeats line {seen[caseId]}")
        seen[caseId] = line
        if not cells.get("input"):
            raise InputError(path, f"line {line}: case '{caseId}' has no input")
        parameters = {k: v for k, v in cells.items() if k not in BASE_COLUMNS and v != ""}
        cases.append(CaseSpec(caseId, _resolve(cells["input"], base),
                              _resolve(cells["followup"], base) if cells.get("followup") else None,
                              parameters, line))
    if not cases:
        raise InputError(path, "manifest lists no case")
    return cases


def _resolve(value: str, base: Path) -> str:
    candidate = Path(value).expanduser()
    return str(candidate if candidate.is_absolute() else (base / candidate).absolute())


def caseParameters(case: CaseSpec, steps: Sequence[str], registry: dict, defaults: Optional[dict] = None,
                   manifestDir: Optional[Path] = None) -> dict:
    """Effective parameters of a case for the selected steps: step defaults < ``defaults`` < row."""
    parameters: dict = {}
    for name in steps:
        step = registry[name]
        for column in step.columns:
            fromRow = case.parameters.get(column) if column not in OPERATOR_ONLY_COLUMNS else None
            value = fromRow if fromRow is not None else (defaults or {}).get(column, step.defaults.get(column))
            if value is None or value == "":
                continue
            value = str(value)
            if column in step.hashedColumns and not Path(value).is_absolute():
                # a file named relative to the manifest (cells) or to the current folder (--set)
                for base in ([manifestDir] if manifestDir is not None else []) + [Path.cwd()]:
                    if (base / value).exists():
                        value = str((base / value).absolute())
                        break
            parameters[column] = value
    return parameters

