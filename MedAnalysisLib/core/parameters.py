"""One declaration per operation parameter: the dataclass field *is* the parameter.

An operation's parameters are a dataclass whose fields are declared with :func:`option`
(default, help, unit, choices, how text is parsed, and whether the command line and batch
manifests offer it).  From that one declaration come

* the command-line options (:func:`add_arguments`, :func:`from_namespace`),
* the batch manifest columns (:func:`batch_columns`, :func:`from_row`),
* the Slicer panel's defaults and parameter-node round trip (the dataclass defaults, read by
  ``MedAnalysis/gui.py``'s ``loadParameters``/``saveParameters``),
* messages that name the parameter (:func:`describe`), never a command-line flag.

Adding an option to an operation is one ``option(...)`` line in its dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Callable, Iterable, Optional, Sequence

from .errors import InputError

_META = "medanalysis"


def option(default: Any, help: str, *, unit: str = "", choices: Optional[Sequence[str]] = None,
           parse: Optional[Callable[[str], Any]] = None, flag: Optional[str] = None, cli: bool = True,
           batch: bool = True, metavar: Optional[str] = None, column: Optional[str] = None) -> Any:
    """A dataclass field carrying its own description.

    ``flag``: the command-line name (default ``--`` + the field name with dashes); ``parse``:
    text -> value for the command line and manifest cells (default: from the default's type);
    ``cli``/``batch``: offered on the command line / as a manifest column (``column``: its name,
    default the flag's with underscores).
    """
    meta = {"help": help, "unit": unit, "choices": tuple(choices) if choices else None, "parse": parse,
            "flag": flag, "cli": cli, "batch": batch, "metavar": metavar, "column": column}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={_META: meta})
    return dataclasses.field(default=default, metadata={_META: meta})


def declared(cls) -> list[dataclasses.Field]:
    """The fields of ``cls`` declared with :func:`option`, in declaration order."""
    return [f for f in dataclasses.fields(cls) if _META in f.metadata]


def _meta(field: dataclasses.Field) -> dict:
    return field.metadata[_META]


def flag_of(field: dataclasses.Field) -> str:
    return _meta(field)["flag"] or "--" + field.name.replace("_", "-")


def column_of(field: dataclasses.Field) -> str:
    return _meta(field)["column"] or flag_of(field).lstrip("-").replace("-", "_")


def describe(cls, name: str) -> str:
    """'name (unit): help' for messages and documentation."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = _meta(field)
    unit = f" ({meta['unit']})" if meta["unit"] else ""
    return f"{name}{unit}: {meta['help']}"


def defaults(cls) -> dict:
    """Field name -> default (what a panel shows before the user changes anything)."""
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(cls)}


# --- text -> value ----------------------------------------------------------------------------

def non_negative(text: str) -> float:
    """A finite number >= 0."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a finite number >= 0, got '{text}'")
    return value


def positive(text: str) -> float:
    """A finite number > 0."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a finite number > 0, got '{text}'")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (thread counts, sizes)."""
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


TRUE_WORDS = ("1", "true", "yes", "y", "on")
FALSE_WORDS = ("", "0", "false", "no", "n", "off")


def parse_bool(text: str) -> bool:
    """yes/no text of a command-line value or manifest cell (empty is no)."""
    value = str(text).strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(f"expected yes/no, got '{text}'")


def parse_spacing(text: str) -> tuple:
    """'S' (isotropic) or 'SX,SY,SZ' (commas, spaces, 'x' or ';') -> three positive finite mm."""
    parts = [p for p in str(text).replace("x", ",").replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    values = values * 3 if len(values) == 1 else values
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"expected one or three positive numbers in mm ('1' or '1,1,3'), got '{text}'")
    return values


def _parser_for(field: dataclasses.Field) -> Callable[[str], Any]:
    meta = _meta(field)
    if meta["parse"] is not None:
        return meta["parse"]
    default = field.default
    if isinstance(default, bool):
        return parse_bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def parse_value(cls, name: str, text: str) -> Any:
    """A parameter's value from text, refused with a message naming the parameter."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = _meta(field)
    try:
        value = _parser_for(field)(text)
    except (ValueError, TypeError) as error:
        raise InputError(name, str(error)) from None
    if meta["choices"] and value not in meta["choices"]:
        raise InputError(name, f"unknown choice '{value}' (use {' | '.join(meta['choices'])})")
    return value


# --- command line -----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, cls, exclude: Iterable[str] = ()) -> None:
    """One command-line option per declared field (``cli=True``); unset options stay ``None`` so
    that :func:`from_namespace` keeps the dataclass default."""
    exclude = set(exclude)
    for field in declared(cls):
        meta = _meta(field)
        if not meta["cli"] or field.name in exclude:
            continue
        text = meta["help"] + (f" ({meta['unit']})" if meta["unit"] else "")
        kwargs: dict = {"dest": field.name, "default": None}
        if isinstance(field.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction if field.default else "store_true"
            if not field.default:
                kwargs["default"] = None
        else:
            kwargs["type"] = str  # parsed (and refused with the parameter's name) by from_namespace
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            if meta["metavar"]:
                kwargs["metavar"] = meta["metavar"]
            if field.default not in (None, dataclasses.MISSING, ""):
                text += f"; default {field.default}"
        parser.add_argument(flag_of(field), help=text, **kwargs)


def from_namespace(cls, args: argparse.Namespace, **fixed) -> Any:
    """An instance of ``cls`` from parsed arguments: options given on the command line, the
    dataclass default for the others, ``fixed`` values on top."""
    values = {}
    for field in declared(cls):
        if not _meta(field)["cli"] or not hasattr(args, field.name):
            continue
        given = getattr(args, field.name)
        if given is None:
            continue
        values[field.name] = given if isinstance(given, bool) else parse_value(cls, field.name, given)
    values.update(fixed)
    return cls(**values)


# --- batch manifests --------------------------------------------------------------------------

def batch_columns(cls) -> tuple:
    """Manifest column names of the declared fields offered to batches."""
    return tuple(column_of(f) for f in declared(cls) if _meta(f)["batch"])


def from_row(cls, row: dict, **fixed) -> Any:
    """An instance of ``cls`` from a manifest row (column -> text); empty cells keep the default."""
    values = {}
    for field in declared(cls):
        column = column_of(field)
        if not _meta(field)["batch"] or column not in row:
            continue
        text = row[column]
        if text is None or str(text).strip() == "":
            continue
        values[field.name] = parse_value(cls, field.name, str(text).strip())
    values.update(fixed)
    return cls(**values)
