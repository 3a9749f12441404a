"""Values of header elements, read straight from raw bytes where possible.

The accessors (:func:`_strings`, :func:`_text`, :func:`_int`, :func:`_float`, :func:`_floats`,
:func:`_us`, :func:`_key`...) take either a pydicom Dataset or a :class:`~.header.RawHeader` and
never raise on malformed values: they return the default instead. Control characters in text
values are replaced by '?'.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any, Optional

_TAGS: dict = {}
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def _tag(keyword: str) -> int:
    tag = _TAGS.get(keyword)
    if tag is None:
        from ..dicom_tags import KEYWORDS

        if keyword in KEYWORDS:
            tag = _TAGS[keyword] = KEYWORDS[keyword][0]
            return tag
        from pydicom.datadict import tag_for_keyword

        tag = _TAGS[keyword] = tag_for_keyword(keyword)
    return tag


_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")  # terminal escapes and other controls from headers


def _strings(dataset, keyword: str) -> Optional[list]:
    """Values of a text element as stripped strings, straight from the raw bytes when the
    element has not been converted yet (much faster than pydicom's value conversion)."""
    if dataset is None:
        return None
    try:
        element = dataset.get_item(_tag(keyword))
    except Exception:  # noqa: BLE001 - malformed element
        return None
    if element is None:
        return None
    value = element.value
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        vr = element.VR
        if vr is not None and vr != "UN" and vr not in _TEXT_VRS:
            if vr in ("US", "SS", "UL", "SL") and len(value) >= 2:
                code = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}[vr]
                width = struct.calcsize(code)
                endian = "<" if element.is_little_endian else ">"
                count = len(value) // width
                return [str(v) for v in struct.unpack(f"{endian}{count}{code}", value[:count * width])]
            return None
        text = _CONTROL_CHARACTERS.sub("?", value.decode("latin-1").strip("\x00 "))
        if not text:
            return None
        return [part.strip("\x00 ") for part in text.split("\\")]
    if isinstance(value, (str, int, float)):
        text = _CONTROL_CHARACTERS.sub("?", str(value).strip())
        return [text] if text else None
    try:
        return [_CONTROL_CHARACTERS.sub("?", str(v).strip()) for v in value]
    except TypeError:
        return None


def _us(dataset, keyword: str, default: Optional[int] = None) -> Optional[int]:
    """An unsigned short (Rows, BitsAllocated...), decoding the raw element in either VR form."""
    try:
        element = dataset.get_item(_tag(keyword))
    except Exception:  # noqa: BLE001
        return default
    if element is None or element.value is None:
        return default
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        if element.VR in _TEXT_VRS:
            return _int(dataset, keyword, default)
        if len(value) < 2:
            return default
        return struct.unpack("<H" if element.is_little_endian else ">H", value[:2])[0]
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _text(dataset, keyword: str, default: str = "") -> str:
    values = _strings(dataset, keyword)
    return "\\".join(values) if values else default


def _int(dataset, keyword: str, default: Optional[int] = None) -> Optional[int]:
    values = _strings(dataset, keyword)
    if not values:
        return default
    try:
        return int(float(values[0]))
    except ValueError:
        return default


def _float(dataset, keyword: str, default: Optional[float] = None) -> Optional[float]:
    values = _strings(dataset, keyword)
    if not values:
        return default
    try:
        result = float(values[0])
    except ValueError:
        return default
    return result if math.isfinite(result) else default


def _floats(dataset, keyword: str, count: int) -> Optional[tuple]:
    values = _strings(dataset, keyword)
    if not values or len(values) != count:
        return None
    try:
        result = tuple(float(v) for v in values)
    except ValueError:
        return None
    return result if all(math.isfinite(v) for v in result) else None


def _key(dataset, keyword: str) -> Any:
    """A hashable, sortable value for splitting: a number when the value is one, else the text."""
    values = _strings(dataset, keyword)
    if not values:
        return None
    if len(values) > 1:
        return tuple(values)
    try:
        return float(values[0])
    except ValueError:
        return values[0]


def _window(item) -> Optional[tuple]:
    center, width = _float(item, "WindowCenter"), _float(item, "WindowWidth")
    return (center, width) if center is not None and width else None


def _first_item(dataset, keyword: str):
    try:
        sequence = dataset.get(keyword)
    except Exception:  # noqa: BLE001
        return None
    return sequence[0] if sequence else None
