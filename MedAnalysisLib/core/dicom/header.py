"""One file's header: Part 10 file meta, a pydicom-free walk of little-endian data sets, the pydicom
fallback, and the :class:`DicomFile` / :class:`DicomFrame` records built from it.

:func:`read_header` parses one file up to its pixel data and expands it into frames: one per
single-frame file, one per frame of an enhanced multi-frame object (per-frame functional groups).
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .records import (_LONG_VRS, _PIXEL_TAGS, DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, HEADER_CHUNK_BYTES, IMPLICIT_LE,
                      NATIVE_LITTLE_ENDIAN, DicomFile, DicomFrame, FileProblem)
from .stack import _orthonormal_axes
from .values import _first_item, _float, _floats, _int, _key, _tag, _text, _us, _window


# --- file meta ---------------------------------------------------------------------------------

def _looks_like_bare_dataset(head: bytes) -> bool:
    """A DICOM data set without the 128-byte preamble (old ACR-NEMA style files)."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x0200:
        group_be, element_be = struct.unpack(">HH", head[:4])
        if group_be not in (0x0002, 0x0008) or element_be > 0x0200:
            return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    length = struct.unpack("<I", head[4:8])[0]
    return length < 1 << 16


def _tag_at(data: bytes, offset: int, little: bool) -> Optional[tuple]:
    if offset + 4 > len(data):
        return None
    return struct.unpack("<HH" if little else ">HH", data[offset:offset + 4])


def _stop_at_pixels(tag, vr, length) -> bool:
    return int(tag) in (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _file_meta(head: bytes) -> Optional[tuple]:
    """(transfer syntax, offset of the data set) from a Part 10 file meta group, or None.

    The meta group is always explicit VR little endian and starts with its group length,
    so it can be walked without a full parse; anything unexpected returns None and the
    caller falls back to ``pydicom.dcmread``.
    """
    if head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00" or head[136:138] != b"UL":
        return None
    end = 144 + struct.unpack("<I", head[140:144])[0]
    if end > len(head):
        return None
    position, syntax = 144, None
    while position + 8 <= end:
        group, element = struct.unpack("<HH", head[position:position + 4])
        if group != 0x0002:
            return None
        if head[position + 4:position + 6] in _LONG_VRS:
            length, start = struct.unpack("<I", head[position + 8:position + 12])[0], position + 12
        else:
            length, start = struct.unpack("<H", head[position + 6:position + 8])[0], position + 8
        if element == 0x0010:
            syntax = head[start:start + length].rstrip(b"\x00 ").decode("ascii", "replace")
        position = start + length
    return (syntax, end) if syntax and position == end else None


# --- raw header parsing (no pydicom) -------------------------------------------------------------
# Little-endian data sets are walked here up to the pixel data, keeping every top-level element's
# raw bytes: the lookups of this module only need a few values, and importing pydicom costs
# about 0.3 s per process. Sequences are skipped (their tags are kept); files whose chunk cannot
# be walked with certainty, and enhanced multi-frame objects (functional group sequences), go
# through pydicom as before. ``read_header(path, raw_headers=False)`` always takes the pydicom path
# (tests compare both readers that way).


class RawElement:
    __slots__ = ("VR", "value")
    is_little_endian = True

    def __init__(self, vr: str, value: Optional[bytes]):
        self.VR = vr
        self.value = value


class RawHeader:
    """Top-level elements of a data set (up to the pixel data) with raw byte values; supports
    ``get_item(tag)``, ``in`` (tag or keyword) and ``get(keyword)``. ``pydicom_dataset()`` reads
    the file with pydicom for whoever needs a full Dataset (de-identification, sequences)."""

    def __init__(self, path: Path, elements: dict):
        self.path = path
        self._elements = elements
        self._full = None

    def get_item(self, tag):
        return self._elements.get(int(tag))

    def __contains__(self, key) -> bool:
        return (_tag(key) if isinstance(key, str) else int(key)) in self._elements

    def get(self, keyword: str, default=None):
        element = self._elements.get(_tag(keyword))
        if element is None:
            return default
        if element.VR == "SQ" or element.value is None:
            return self.pydicom_dataset().get(keyword, default)
        return element.value

    def pydicom_dataset(self):
        if self._full is None:
            import pydicom

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._full = pydicom.dcmread(self.path, stop_before_pixels=True, force=True)
        return self._full


def full_header(header):
    """A pydicom Dataset for ``header`` (a RawHeader is read again with pydicom)."""
    return header.pydicom_dataset() if isinstance(header, RawHeader) else header


def _is_vr(code: bytes) -> bool:
    return len(code) == 2 and 65 <= code[0] <= 90 and 65 <= code[1] <= 90


def _element_at(data: bytes, position: int, implicit: bool) -> Optional[tuple]:
    """(tag, VR bytes or None, value length, value offset) of the element at ``position``."""
    if position + 8 > len(data):
        return None
    group, element = struct.unpack_from("<HH", data, position)
    if implicit or group == 0xFFFE:
        return (group << 16) | element, None, struct.unpack_from("<I", data, position + 4)[0], position + 8
    code = data[position + 4:position + 6]
    if not _is_vr(code):
        return None
    if code in _LONG_VRS:
        if position + 12 > len(data):
            return None
        return (group << 16) | element, code, struct.unpack_from("<I", data, position + 8)[0], position + 12
    return (group << 16) | element, code, struct.unpack_from("<H", data, position + 6)[0], position + 8


def _skip_sequence(data: bytes, position: int, implicit: bool, depth: int = 0) -> Optional[int]:
    """Offset just after the delimiter of the undefined-length sequence whose items start at ``position``."""
    if depth > 16:
        return None
    while True:
        found = _element_at(data, position, True)
        if found is None:
            return None
        tag, _, length, position = found
        if tag == 0xFFFEE0DD:
            return position
        if tag != 0xFFFEE000:
            return None
        if length != 0xFFFFFFFF:
            position += length
            continue
        while True:  # undefined-length item: walk its elements to the item delimiter
            found = _element_at(data, position, implicit)
            if found is None:
                return None
            tag, code, length, value = found
            if tag == 0xFFFEE00D:
                position = value
                break
            if length == 0xFFFFFFFF:
                position = _skip_sequence(data, value, implicit or code == b"UN", depth + 1)
                if position is None:
                    return None
            else:
                position = value + length


def _raw_header(path: Path, head: bytes, start: int, implicit: bool) -> Optional[tuple]:
    """(RawHeader, offset of the pixel data element) or None when pydicom should read the file."""
    from ..dicom_tags import VR_OF_TAG

    elements = {}
    position = start
    while True:
        found = _element_at(head, position, implicit)
        if found is None:
            return None
        tag, code, length, value = found
        if tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
            break
        if tag >> 16 == 0xFFFE:
            return None
        vr = VR_OF_TAG.get(tag, "UN") if code is None or code == b"UN" else code.decode("ascii")
        if length == 0xFFFFFFFF:
            if code is not None and code not in (b"SQ", b"UN"):
                return None
            position = _skip_sequence(head, value, implicit or code == b"UN")
            if position is None:
                return None
            elements[tag] = RawElement("SQ", None)
            continue
        position = value + length
        if position > len(head):
            return None
        elements[tag] = RawElement(vr, None if vr == "SQ" else head[value:position])
    if 0x52009230 in elements:  # enhanced multi-frame: per-frame functional groups need pydicom
        return None
    return RawHeader(path, elements), position


def _syntax(dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not syntax:
        implicit, little = getattr(dataset, "original_encoding", (True, True))
        syntax = EXPLICIT_BE if little is False else (EXPLICIT_LE if implicit is False else IMPLICIT_LE)
    return syntax


def _parse_header(path: Path, head: bytes, size: int, force: bool, raw_headers: bool = True) -> tuple:
    """(data set without pixel data, transfer syntax, offset of the pixel data element or None).

    Fast path: the data set is parsed from the first chunk of the file with
    ``pydicom.filereader.read_dataset`` after walking the file meta group; otherwise (or when
    the chunk ends before the pixel data) ``pydicom.dcmread`` reads the file.
    """
    meta = _file_meta(head)
    if raw_headers and meta is not None and meta[0] not in (DEFLATED_LE, EXPLICIT_BE) \
            and meta[0].startswith("1.2.840.10008.1.2"):
        raw = _raw_header(path, head, meta[1], meta[0] == IMPLICIT_LE)
        if raw is not None:
            return raw[0], meta[0], raw[1]
    import pydicom
    from pydicom.filereader import read_dataset

    if meta is not None and meta[0] != DEFLATED_LE and meta[0].startswith("1.2.840.10008.1.2"):
        syntax, start = meta
        little = syntax != EXPLICIT_BE
        stream = io.BytesIO(head)
        stream.seek(start)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = read_dataset(stream, syntax == IMPLICIT_LE, little, stop_when=_stop_at_pixels)
            position = stream.tell()
            if _tag_at(head, position, little) in _PIXEL_TAGS:
                return dataset, syntax, position
        except Exception:  # noqa: BLE001 - the chunk may end inside an element: read the whole file
            pass
    with open(path, "rb") as stream:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(stream, stop_before_pixels=True, force=force)
        position = stream.tell()
        stream.seek(position)
        syntax = _syntax(dataset)
        tag = _tag_at(stream.read(4), 0, syntax != EXPLICIT_BE)
    if tag in _PIXEL_TAGS and syntax != DEFLATED_LE:
        return dataset, syntax, position
    return dataset, syntax, None


def read_header(path: "str | os.PathLike", raw_headers: bool = True) -> Optional[DicomFile]:
    """Header facts and frames of one file; None when the file is not DICOM.

    ``raw_headers`` (default) walks little-endian data sets without pydicom where it can;
    False always parses with pydicom (tests compare the two readers).

    Raises:
        FileProblem: the file claims to be DICOM (or cannot be opened) but cannot be used.
    """
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            head = stream.read(HEADER_CHUNK_BYTES)
            size = os.fstat(stream.fileno()).st_size
    except PermissionError:
        raise FileProblem(path, "permission denied (file is not readable)") from None
    except OSError as error:
        raise FileProblem(path, f"cannot be read ({error.strerror or error})") from None
    has_preamble = len(head) >= 132 and head[128:132] == b"DICM"
    if not has_preamble and not _looks_like_bare_dataset(head):
        return None
    try:
        dataset, syntax, pixel_offset = _parse_header(path, head, size, force=not has_preamble,
                                                      raw_headers=raw_headers)
    except Exception as error:  # noqa: BLE001 - pydicom raises many types on malformed input
        if has_preamble:
            raise FileProblem(path, f"unreadable DICOM header ({type(error).__name__})") from None
        return None
    if not has_preamble and "SOPClassUID" not in dataset and "Rows" not in dataset:
        return None
    try:
        record = _file_record(path, size, dataset, syntax, pixel_offset, head)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as error:
        raise FileProblem(path, f"invalid DICOM header value ({type(error).__name__}: {error})") from None
    return record


# --- file records and frames -------------------------------------------------------------------

def _file_record(path: Path, size: int, dataset, syntax: str, pixel_offset: Optional[int],
                 chunk: bytes = b"") -> DicomFile:
    float_pixels = False
    has_pixels = pixel_offset is not None
    if pixel_offset is None and syntax == DEFLATED_LE:
        has_pixels = True  # deflated data sets are parsed whole at load time
    rows = _us(dataset, "Rows", 0) or 0
    columns = _us(dataset, "Columns", 0) or 0
    if not rows or not columns:
        has_pixels = False
    record = DicomFile(
        path=path, size_bytes=size, transfer_syntax=syntax,
        sop_class_uid=_text(dataset, "SOPClassUID"),
        sop_instance_uid=_text(dataset, "SOPInstanceUID") or f"file:{path}",
        study_uid=_text(dataset, "StudyInstanceUID", "unknown-study"),
        series_uid=_text(dataset, "SeriesInstanceUID", "unknown-series"),
        modality=_text(dataset, "Modality", "OT").upper(),
        series_number=_int(dataset, "SeriesNumber"),
        instance_number=_int(dataset, "InstanceNumber"),
        rows=rows, columns=columns,
        samples=_us(dataset, "SamplesPerPixel", 1) or 1,
        photometric=_text(dataset, "PhotometricInterpretation", "MONOCHROME2").upper(),
        bits_allocated=_us(dataset, "BitsAllocated", 16) or 16,
        bits_stored=_us(dataset, "BitsStored", 0) or 0,
        pixel_representation=_us(dataset, "PixelRepresentation", 0) or 0,
        planar_configuration=_us(dataset, "PlanarConfiguration", 0) or 0,
        number_of_frames=max(_int(dataset, "NumberOfFrames", 1) or 1, 1),
        has_pixels=has_pixels, float_pixels=float_pixels,
        pixel_offset=pixel_offset if syntax in NATIVE_LITTLE_ENDIAN else None,
        header=dataset,
    )
    if record.bits_stored <= 0 or record.bits_stored > record.bits_allocated:
        record.bits_stored = record.bits_allocated
    if has_pixels and pixel_offset is not None:
        _check_pixel_element(record, pixel_offset, chunk)
    if record.has_pixels:
        frames_problem = _frame_count_problem(record)
        if frames_problem:
            record.problem = frames_problem  # the file is left out; no frame list is built for it
        else:
            record.frames = _frames_of(record, dataset)
    return record


def _usable_orientation(orientation: Optional[tuple]) -> Optional[tuple]:
    """ImageOrientationPatient when it describes two near-unit, non-parallel axes; else None (a
    header that lies about orientation is treated as one that gives none)."""
    if orientation is None:
        return None
    values = np.asarray(orientation, dtype=float)
    if not np.all(np.isfinite(values)) or np.abs(values).max() > 2.0:
        return None
    row, column = values[:3], values[3:]
    norms = np.linalg.norm(row), np.linalg.norm(column)
    if not (0.5 < norms[0] < 2.0 and 0.5 < norms[1] < 2.0):
        return None
    if np.linalg.norm(np.cross(row / norms[0], column / norms[1])) < 0.5:
        return None
    return orientation


def _usable_spacing(spacing: Optional[tuple]) -> Optional[tuple]:
    """PixelSpacing when both values are positive and finite; else None."""
    if spacing is None or not all(math.isfinite(v) and 0 < v < 1e4 for v in spacing):
        return None
    return spacing


def _frame_count_problem(record: DicomFile) -> Optional[str]:
    """A declared frame count the file cannot hold (native frames need their bytes, an
    encapsulated frame at least one 8-byte item, a deflated dataset 1/1032 of its bytes)."""
    if record.transfer_syntax in NATIVE_LITTLE_ENDIAN | {EXPLICIT_BE}:
        least = record.frame_bytes
    elif record.transfer_syntax == DEFLATED_LE:
        least = record.frame_bytes // 1032
    else:
        least = 8
    if record.number_of_frames > 1 and record.number_of_frames * max(least, 1) > record.size_bytes:
        return (f"declares {record.number_of_frames} frames of {record.rows}x{record.columns}, more than its "
                f"{record.size_bytes} bytes can hold")
    return None


def _check_pixel_element(record: DicomFile, offset: int, chunk: bytes = b"") -> None:
    """Native pixel data: find where the values start and refuse truncated files."""
    little = record.transfer_syntax != EXPLICIT_BE
    if offset + 12 <= len(chunk):
        head = chunk[offset:offset + 12]
    else:
        with open(record.path, "rb") as stream:
            stream.seek(offset)
            head = stream.read(12)
    tag = _tag_at(head, 0, little)
    if tag == (0x7FE0, 0x0008) or tag == (0x7FE0, 0x0009):
        record.float_pixels = True
        record.bits_allocated = 32 if tag == (0x7FE0, 0x0008) else 64
        record.bits_stored = record.bits_allocated
    explicit = record.transfer_syntax != IMPLICIT_LE
    if explicit and head[4:6] in _LONG_VRS:
        value_offset, length = offset + 12, struct.unpack("<I" if little else ">I", head[8:12])[0]
    elif explicit and len(head) >= 8 and head[4:6].isalpha():
        value_offset, length = offset + 8, struct.unpack("<H" if little else ">H", head[6:8])[0]
    else:
        value_offset, length = offset + 8, struct.unpack("<I" if little else ">I", head[4:8])[0]
    if length == 0xFFFFFFFF:  # encapsulated: checked when decoded
        if record.transfer_syntax in NATIVE_LITTLE_ENDIAN:
            record.pixel_offset = None
        return
    if length == 0:
        record.has_pixels = False
        return
    expected = record.frame_bytes * record.number_of_frames
    available = min(length, record.size_bytes - value_offset)
    if record.transfer_syntax in NATIVE_LITTLE_ENDIAN | {EXPLICIT_BE} and available < expected:
        record.problem = f"truncated pixel data ({max(available, 0)} of {expected} bytes)"
    if record.pixel_offset is not None:
        record.pixel_offset = value_offset


def _frames_of(record: DicomFile, dataset) -> list:
    if _tag("PerFrameFunctionalGroupsSequence") in dataset:
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
        if per_frame:
            return _enhanced_frames(record, dataset, per_frame)
    position = _floats(dataset, "ImagePositionPatient", 3)
    orientation = _usable_orientation(_floats(dataset, "ImageOrientationPatient", 6))
    spacing = _usable_spacing(_floats(dataset, "PixelSpacing", 2) or _floats(dataset, "ImagerPixelSpacing", 2))
    slope = _float(dataset, "RescaleSlope", 1.0) or 1.0
    intercept = _float(dataset, "RescaleIntercept", 0.0)
    common = dict(
        pixel_spacing=spacing, thickness=_float(dataset, "SliceThickness"),
        spacing_between=_float(dataset, "SpacingBetweenSlices"), slope=slope, intercept=intercept,
        echo=_key(dataset, "EchoNumbers") or _key(dataset, "EchoTime"), acquisition=_key(dataset, "AcquisitionNumber"),
        temporal=_key(dataset, "TemporalPositionIdentifier"), trigger=_key(dataset, "TriggerTime"),
        acquisition_time=_key(dataset, "AcquisitionTime"), image_type=_key(dataset, "ImageType"),
        window=_window(dataset))
    count = record.number_of_frames
    if count == 1:
        return [DicomFrame(record, 0, position, orientation, **common)]
    # Classic multi-frame: positions from GridFrameOffsetVector (RT dose), else stacked along the
    # normal from ImagePositionPatient at the declared slice spacing, else no patient geometry.
    offsets = _floats(dataset, "GridFrameOffsetVector", count)
    step = common["spacing_between"] or common["thickness"]
    if position is not None and orientation is not None and offsets is None and step:
        offsets = tuple(index * step for index in range(count))
        record.notes.append(f"multi-frame object without per-frame positions: frames stacked {step:g} mm apart "
                            "along the slice normal (from SpacingBetweenSlices/SliceThickness)")
    frames = []
    normal = _orthonormal_axes(orientation)[2] if orientation is not None else None
    for index in range(count):
        if position is not None and normal is not None and offsets is not None:
            frame_position = tuple(np.asarray(position) + offsets[index] * normal)
            frames.append(DicomFrame(record, index, frame_position, orientation, **common))
        else:
            frames.append(DicomFrame(record, index, None, None, **common))
    return frames


def _enhanced_frames(record: DicomFile, dataset, per_frame) -> list:
    shared = _first_item(dataset, "SharedFunctionalGroupsSequence")
    frames = []

    def lookup(item, sequence_keyword):
        found = _first_item(item, sequence_keyword) if item is not None else None
        if found is None and shared is not None:
            found = _first_item(shared, sequence_keyword)
        return found

    top_slope = _float(dataset, "RescaleSlope", 1.0) or 1.0
    top_intercept = _float(dataset, "RescaleIntercept", 0.0)
    for index in range(record.number_of_frames):
        item = per_frame[index] if index < len(per_frame) else None
        position_item = lookup(item, "PlanePositionSequence")
        orientation_item = lookup(item, "PlaneOrientationSequence")
        measures = lookup(item, "PixelMeasuresSequence")
        transform = lookup(item, "PixelValueTransformationSequence")
        content = lookup(item, "FrameContentSequence")
        echo_item = lookup(item, "MREchoSequence")
        voi = lookup(item, "FrameVOILUTSequence")
        position = _floats(position_item, "ImagePositionPatient", 3)
        orientation = _usable_orientation(_floats(orientation_item, "ImageOrientationPatient", 6))
        if position is None or orientation is None:
            position, orientation = None, None
        slope = (_float(transform, "RescaleSlope", None) if transform is not None else None) or top_slope
        intercept = _float(transform, "RescaleIntercept", None) if transform is not None else None
        frames.append(DicomFrame(
            record, index, position, orientation,
            pixel_spacing=_floats(measures, "PixelSpacing", 2),
            thickness=_float(measures, "SliceThickness") if measures is not None else None,
            spacing_between=_float(measures, "SpacingBetweenSlices") if measures is not None else None,
            slope=slope, intercept=top_intercept if intercept is None else intercept,
            echo=_key(echo_item, "EffectiveEchoTime"),
            temporal=_key(content, "TemporalPositionIndex"),
            stack=_key(content, "StackID"),
            acquisition=_key(content, "FrameAcquisitionNumber"),
            acquisition_time=_key(content, "FrameAcquisitionDateTime"),
            window=_window(voi) if voi is not None else None))
    return frames
