"""DICOM series: header-only scanning, grouping into loadable volumes, geometry QA, loading.

Pipeline (every step pure: pydicom + numpy + SimpleITK, no MRML):

1. :func:`read_header` parses one file up to its pixel data (``stop_before_pixels``) and
   expands it into :class:`DicomFrame` records: one per single-frame file, one per frame of
   an enhanced multi-frame object (per-frame functional groups).
2. :func:`plan_series` groups frames by study and series and splits a series into
   :class:`DicomVolume` records when it mixes sizes, orientations, pixel spacings, echoes,
   stacks or acquisitions, or repeats positions (multi-volume / 4-D series: one volume per
   time point). Slices are ordered by ImagePositionPatient projected on the slice normal,
   never by file name or InstanceNumber.
3. :func:`volume_geometry` measures the acquisition geometry: slice spacing and its
   variation, gantry tilt, in-plane shifts, missing slices. Irregular stacks are resampled
   onto a regular grid by :func:`load_volume` (as Slicer's DICOM scalar volume plugin
   regularizes acquisition geometry), with a warning saying so.
4. :func:`load_volume` reads the pixels (uncompressed little-endian data straight from the
   file into the output array; compressed syntaxes through pydicom's pixel-data plugins),
   applies RescaleSlope/Intercept and returns a SimpleITK image.

Geometry convention: DICOM patient coordinates are LPS, the same as ITK/SimpleITK, so the
image's origin/spacing/direction are the DICOM values themselves (no flip). Voxel axes:
i along the row direction (ImageOrientationPatient[0:3], spacing PixelSpacing[1]), j along
the column direction (ImageOrientationPatient[3:6], spacing PixelSpacing[0]), k along the
slice normal i x j. Arrays are (k, j, i) ordered, as ``sitk.GetArrayFromImage`` returns.

Nothing here logs or returns patient names or IDs.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import struct
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .progress import ProgressReporter

HEADER_CHUNK_BYTES = 64 * 1024
POSITION_TOLERANCE_MM = 0.01  # Slicer's DICOM plugin uses the same epsilon for spacing checks
DUPLICATE_TOLERANCE_MM = 1e-3
ORIENTATION_TOLERANCE = 1e-3
SLAB_GAP_FACTOR = 10.0  # a gap this many times the median spacing splits the stack into slabs

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
NATIVE_LITTLE_ENDIAN = {IMPLICIT_LE, EXPLICIT_LE}
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT",
           "PALETTE COLOR"}


class FileProblem(Exception):
    """A file that looks like DICOM but cannot be used (the reason is one line)."""

    def __init__(self, path: "str | os.PathLike", reason: str):
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


# --- records -----------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class DicomFile:
    """Header facts of one DICOM file (no pixel data, no patient identifiers)."""

    path: Path
    size_bytes: int
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str
    series_number: Optional[int]
    instance_number: Optional[int]
    rows: int
    columns: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    planar_configuration: int
    number_of_frames: int
    has_pixels: bool
    float_pixels: bool
    pixel_offset: Optional[int]  # file offset of the (7FE0,0010) element, native syntaxes only
    header: Any = None  # pydicom Dataset without pixel data; released after planning
    frames: list = dataclasses.field(default_factory=list)
    problem: Optional[str] = None
    notes: list = dataclasses.field(default_factory=list)

    @property
    def frame_bytes(self) -> int:
        samples = self.samples
        if self.photometric == "YBR_FULL_422" and self.samples == 3 and self.transfer_syntax in (
                IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE):
            samples = 2  # uncompressed 4:2:2: two samples per pixel on average
        return (self.rows * self.columns * samples * self.bits_allocated + 7) // 8

    @property
    def is_colour(self) -> bool:
        return self.samples > 1 or self.photometric in _COLOUR


@dataclasses.dataclass(eq=False)
class DicomFrame:
    """One 2-D image: a single-frame file or one frame of a multi-frame file."""

    file: DicomFile
    index: int  # 0-based frame number in the file
    position: Optional[tuple]  # ImagePositionPatient, LPS mm
    orientation: Optional[tuple]  # ImageOrientationPatient (row xyz, column xyz)
    pixel_spacing: Optional[tuple]  # (between rows, between columns) mm
    thickness: Optional[float]
    spacing_between: Optional[float]
    slope: float
    intercept: float
    echo: Any = None
    acquisition: Any = None
    temporal: Any = None
    trigger: Any = None
    acquisition_time: Any = None
    stack: Any = None
    image_type: Any = None
    window: Optional[tuple] = None

    @property
    def instance(self) -> int:
        number = self.file.instance_number
        return number if number is not None else 0

    def order_key(self) -> tuple:
        """Tie-break for frames at one position: instance number, then file name, then frame."""
        return (self.instance, str(self.file.path), self.index)


@dataclasses.dataclass
class VolumeGeometry:
    """Acquisition geometry of a stack of parallel slices and the regular grid it loads onto.

    All positions are LPS mm. ``slice_positions`` are the acquired slices' coordinates along
    the normal, ``in_plane_offsets`` their (row, column)-direction offsets from the first
    slice: both zero-variation for a regular stack.
    """

    origin: np.ndarray
    spacing: np.ndarray  # (i, j, k) mm
    direction: np.ndarray  # 3x3, columns: row direction, column direction, normal
    size: tuple  # (i, j, k) voxels of the output grid
    slice_positions: np.ndarray
    in_plane_offsets: np.ndarray  # (N, 2) mm along row and column directions
    regular: bool
    has_patient_geometry: bool = True
    qa: dict = dataclasses.field(default_factory=dict)
    warnings: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class DicomVolume:
    """A loadable volume: frames ordered along the slice normal and their geometry."""

    volume_id: str
    label: str
    frames: list
    geometry: VolumeGeometry
    series: "DicomSeries" = None
    warnings: list = dataclasses.field(default_factory=list)
    qa: dict = dataclasses.field(default_factory=dict)

    @property
    def header(self):
        return self.frames[0].file.header

    @property
    def files(self) -> list:
        seen, files = set(), []
        for frame in self.frames:
            if id(frame.file) not in seen:
                seen.add(id(frame.file))
                files.append(frame.file)
        return files


@dataclasses.dataclass(eq=False)
class DicomSeries:
    study_uid: str
    series_uid: str
    modality: str
    series_number: Optional[int]
    files: list
    volumes: list = dataclasses.field(default_factory=list)
    warnings: list = dataclasses.field(default_factory=list)
    qa: dict = dataclasses.field(default_factory=dict)

    @property
    def header(self):
        for volume in self.volumes:
            if volume.header is not None:
                return volume.header
        return self.files[0].header if self.files else None


@dataclasses.dataclass
class ScanResult:
    """Series found in a source, and what was skipped (file names relative to the source)."""

    series: list
    dicom_files: int = 0
    non_dicom_files: int = 0
    non_image_objects: int = 0
    skipped: list = dataclasses.field(default_factory=list)  # (relative name, reason)


# --- header reading ----------------------------------------------------------------------------

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
# through pydicom as before.

RAW_HEADERS = True  # tests compare both readers by switching this off


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
    from .dicom_tags import VR_OF_TAG

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


def _parse_header(path: Path, head: bytes, size: int, force: bool) -> tuple:
    """(data set without pixel data, transfer syntax, offset of the pixel data element or None).

    Fast path: the data set is parsed from the first chunk of the file with
    ``pydicom.filereader.read_dataset`` after walking the file meta group; otherwise (or when
    the chunk ends before the pixel data) ``pydicom.dcmread`` reads the file.
    """
    meta = _file_meta(head)
    if RAW_HEADERS and meta is not None and meta[0] not in (DEFLATED_LE, EXPLICIT_BE) \
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


def read_header(path: "str | os.PathLike") -> Optional[DicomFile]:
    """Header facts and frames of one file; None when the file is not DICOM.

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
        dataset, syntax, pixel_offset = _parse_header(path, head, size, force=not has_preamble)
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


_TAGS: dict = {}
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def _tag(keyword: str) -> int:
    tag = _TAGS.get(keyword)
    if tag is None:
        from .dicom_tags import KEYWORDS

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
        record.frames = _frames_of(record, dataset)
    return record


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


def _window(item) -> Optional[tuple]:
    center, width = _float(item, "WindowCenter"), _float(item, "WindowWidth")
    return (center, width) if center is not None and width else None


def _first_item(dataset, keyword: str):
    try:
        sequence = dataset.get(keyword)
    except Exception:  # noqa: BLE001
        return None
    return sequence[0] if sequence else None


def _frames_of(record: DicomFile, dataset) -> list:
    if _tag("PerFrameFunctionalGroupsSequence") in dataset:
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
        if per_frame:
            return _enhanced_frames(record, dataset, per_frame)
    position = _floats(dataset, "ImagePositionPatient", 3)
    orientation = _floats(dataset, "ImageOrientationPatient", 6)
    spacing = _floats(dataset, "PixelSpacing", 2) or _floats(dataset, "ImagerPixelSpacing", 2)
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
        orientation = _floats(orientation_item, "ImageOrientationPatient", 6)
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


# --- grouping ------------------------------------------------------------------------------------

def scan_files(paths: Sequence["str | os.PathLike"], relative: Callable[[Any], str] = lambda p: Path(p).name,
               report: Optional[ProgressReporter] = None) -> ScanResult:
    """Read every file's header and group the DICOM images into series and volumes."""
    report = report or ProgressReporter()
    files, skipped, damaged = [], [], []
    non_dicom = non_image = 0
    total = len(paths)
    for number, path in enumerate(paths):
        if number % 64 == 0:
            report(number / max(total, 1), f"reading headers {number}/{total}")
        try:
            record = read_header(path)
        except FileProblem as problem:
            skipped.append((relative(path), problem.reason))
            continue
        if record is None:
            non_dicom += 1
            continue
        if not record.has_pixels:
            non_image += 1
            continue
        if record.problem:
            skipped.append((relative(path), record.problem))
            damaged.append(record)
            record.header = None
            continue
        files.append(record)
    report(1.0, f"read {total} headers")
    series = plan_series(files, relative)
    by_uid = {(s.study_uid, s.series_uid): s for s in series}
    for record in damaged:
        owner = by_uid.get((record.study_uid, record.series_uid))
        if owner is not None:
            owner.warnings.append(f"left out {relative(record.path)}: {record.problem}")
    return ScanResult(series, dicom_files=len(files) + non_image + len(skipped), non_dicom_files=non_dicom,
                      non_image_objects=non_image, skipped=skipped)


def plan_series(files: Sequence[DicomFile], relative: Callable[[Any], str] = lambda p: Path(p).name) -> list:
    """Group files by study and series and plan each series' loadable volumes."""
    grouped: dict = defaultdict(list)
    for record in files:
        grouped[(record.study_uid, record.series_uid)].append(record)
    result = []
    for (study_uid, series_uid), members in grouped.items():
        first = members[0]
        series = DicomSeries(study_uid, series_uid, first.modality, first.series_number, members)
        unique, seen = [], {}
        for record in sorted(members, key=lambda r: str(r.path)):
            if record.sop_instance_uid in seen:
                series.warnings.append(f"{relative(record.path)} is a copy of {relative(seen[record.sop_instance_uid])} "
                                       "(same SOP Instance UID): ignored")
                continue
            seen[record.sop_instance_uid] = record.path
            unique.append(record)
        series.files = unique
        frames = [frame for record in unique for frame in record.frames]
        series.volumes = _plan_volumes(series, frames, relative)
        for number, volume in enumerate(series.volumes, start=1):
            volume.series = series
            volume.volume_id = series_uid if len(series.volumes) == 1 else f"{series_uid}#{number}"
        keep = {id(volume.frames[0].file) for volume in series.volumes}
        for record in unique:
            if id(record) not in keep and record is not unique[0]:
                record.header = None  # only one header per volume is needed for metadata
        result.append(series)
    result.sort(key=lambda s: (_text(s.header, "StudyDate"), _text(s.header, "StudyTime"), s.study_uid,
                               s.series_number if s.series_number is not None else 1 << 30, s.series_uid))
    return result


def _orientation_clusters(frames: Sequence[DicomFrame]) -> list:
    representatives: list = []
    labels = []
    for frame in frames:
        if frame.orientation is None or frame.position is None:
            labels.append(-1)
            continue
        value = np.asarray(frame.orientation)
        for number, representative in enumerate(representatives):
            if np.max(np.abs(representative - value)) <= ORIENTATION_TOLERANCE:
                labels.append(number)
                break
        else:
            representatives.append(value)
            labels.append(len(representatives) - 1)
    return labels


def _split(frames: Sequence[DicomFrame], key: Callable[[DicomFrame], Any]) -> list:
    groups: dict = {}
    for frame in frames:
        groups.setdefault(key(frame), []).append(frame)
    return list(groups.items())


def _sort_value(value) -> tuple:
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (int, float)):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def _describe_value(name: str, value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, tuple):
        value = "\\".join(value)
    return f"{name} {value}"


def _plan_volumes(series: DicomSeries, frames: list, relative) -> list:
    """Split a series' frames into stacks that each form one regular-or-regularizable volume."""
    orientation_labels = _orientation_clusters(frames)
    hard_groups: dict = {}
    for frame, orientation_label in zip(frames, orientation_labels):
        spacing = tuple(round(v, 4) for v in frame.pixel_spacing) if frame.pixel_spacing else None
        key = (frame.file.rows, frame.file.columns, frame.file.is_colour, orientation_label, spacing)
        hard_groups.setdefault(key, []).append(frame)
    if len(hard_groups) > 1:
        keys = list(hard_groups)
        reasons = [name for position, name in ((0, "size"), (1, "size"), (2, "colour"), (3, "orientation"),
                                               (4, "pixel spacing"))
                   if len({k[position] for k in keys}) > 1]
        series.warnings.append(f"series mixes {', '.join(dict.fromkeys(reasons))}: split into {len(keys)} "
                               "groups of consistent slices")
        series.qa["split_by"] = list(dict.fromkeys(reasons))
    plans: list = []  # (label, frames, notes)
    for key, group in hard_groups.items():
        label = ""
        if len(hard_groups) > 1:
            label = f"{key[1]}x{key[0]}" if key[3] == -1 else f"{key[1]}x{key[0]} orientation {key[3] + 1}"
        if key[3] == -1:  # no patient geometry: one stack in instance order
            plans.append((label, sorted(group, key=DicomFrame.order_key), []))
            continue
        sub = [(label, group)]
        for name, attribute in (("echo", "echo"), ("stack", "stack")):
            expanded = []
            for sub_label, sub_frames in sub:
                parts = _split(sub_frames, lambda f: getattr(f, attribute))
                repeated = len(parts) > 1 and max(len(g) for g in _position_groups(sub_frames)) > 1
                if repeated:  # several echoes / stacks covering the same positions
                    parts.sort(key=lambda item: _sort_value(item[0]))
                    if name not in series.qa.setdefault("split_by", []):
                        series.qa["split_by"].append(name)
                    for value, part in parts:
                        expanded.append((" ".join(filter(None, [sub_label, _describe_value(name, value)])), part))
                else:
                    expanded.append((sub_label, sub_frames))
            sub = expanded
        for sub_label, sub_frames in sub:
            plans.extend(_resolve_repeats(series, sub_label, sub_frames, relative))
    volumes = []
    for label, stack, notes in plans:
        if stack and stack[0].position is not None:
            slabs = _split_slabs(stack)
            if len(slabs) > 1:
                ends = _normal_coordinates([frame for slab in slabs for frame in (slab[0], slab[-1])])
                gaps = [float(ends[2 * i + 2] - ends[2 * i + 1]) for i in range(len(slabs) - 1)]
                series.warnings.append(f"{label + ': ' if label else ''}slices form {len(slabs)} separate slabs "
                                       f"(gaps of {', '.join(f'{g:.1f}' for g in gaps)} mm): loaded as separate volumes")
            for number, slab in enumerate(slabs, start=1):
                slab_label = label if len(slabs) == 1 else " ".join(filter(None, [label, f"slab {number}"]))
                volumes.append(_make_volume(slab_label, slab, notes, relative))
        else:
            volumes.append(_make_volume(label, stack, notes, relative))
    return volumes


def _normal_coordinates(frames: Sequence[DicomFrame]) -> np.ndarray:
    """Positions projected on the first frame's slice normal (mm)."""
    normal = _orthonormal_axes(frames[0].orientation)[2]
    return np.array([f.position for f in frames], dtype=float) @ normal


def _position_groups(frames: Sequence[DicomFrame]) -> list:
    """Frames grouped by position (same plane within DUPLICATE_TOLERANCE_MM), in normal order."""
    coordinates = _normal_coordinates(frames)
    order = np.argsort(coordinates, kind="stable")
    groups: list = []
    last = None
    for index in order:
        if last is not None and coordinates[index] - last <= DUPLICATE_TOLERANCE_MM:
            groups[-1].append(frames[index])
        else:
            groups.append([frames[index]])
        last = coordinates[index]
    return groups


_REPEAT_KEYS = (("acquisition", "AcquisitionNumber"), ("temporal", "TemporalPosition"),
                ("trigger", "TriggerTime"), ("acquisition_time", "AcquisitionTime"), ("image_type", "ImageType"))


def _resolve_repeats(series: DicomSeries, label: str, frames: list, relative) -> list:
    """Frames repeating positions: split into time points / acquisitions, else drop duplicates."""
    groups = _position_groups(frames)
    counts = [len(g) for g in groups]
    if max(counts) == 1:
        return [(label, [g[0] for g in groups], [])]
    for attribute, name in _REPEAT_KEYS:
        values = [getattr(f, attribute) for f in frames]
        if any(v is None for v in values) or len(set(values)) < 2:
            continue
        parts = _split(frames, lambda f: getattr(f, attribute))
        if len(parts) != max(counts):
            continue  # e.g. AcquisitionTime differing per slice: not one value per volume
        if all(max(len(g) for g in _position_groups(part)) == 1 for _, part in parts):
            parts.sort(key=lambda item: _sort_value(item[0]))
            uniform = len({len(part) for _, part in parts}) == 1
            if uniform:
                series.qa["multi_volume"] = {"volumes": len(parts), "split_by": name,
                                             "loaded_as": "separate volumes"}
            series.warnings.append(f"{label + ': ' if label else ''}positions repeat: split by {name} into "
                                   f"{len(parts)} volumes{' (time points)' if uniform else ''}")
            return [(" ".join(filter(None, [label, _describe_value(name, value)])),
                     [g[0] for g in _position_groups(part)], []) for value, part in parts]
    if len(set(counts)) == 1:
        repeats = counts[0]
        series.qa["multi_volume"] = {"volumes": repeats, "split_by": "instance order",
                                     "loaded_as": "separate volumes"}
        series.warnings.append(f"{label + ': ' if label else ''}every position repeats {repeats} times with no "
                               f"distinguishing attribute: split into {repeats} volumes by instance order")
        ranked = [sorted(g, key=DicomFrame.order_key) for g in groups]
        return [(" ".join(filter(None, [label, f"volume {number + 1}"])), [g[number] for g in ranked], [])
                for number in range(repeats)]
    kept, dropped = [], []
    for group in groups:
        ordered = sorted(group, key=DicomFrame.order_key)
        kept.append(ordered[0])
        dropped.extend(ordered[1:])
    names = sorted({relative(f.file.path) for f in dropped})
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    note = f"{len(dropped)} duplicate slice(s) at already-filled positions ignored ({shown})"
    series.qa["duplicates_removed"] = series.qa.get("duplicates_removed", 0) + len(dropped)
    return [(label, kept, [note])]


def _split_slabs(frames: list) -> list:
    if len(frames) < 3:
        return [frames]
    gaps = np.diff(_normal_coordinates(frames))
    median = float(np.median(gaps))
    if median <= 0:
        return [frames]
    cuts = [i + 1 for i, gap in enumerate(gaps) if gap > SLAB_GAP_FACTOR * median and gap - median > 10.0]
    if not cuts:
        return [frames]
    bounds = [0, *cuts, len(frames)]
    return [frames[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def _make_volume(label: str, frames: list, notes: list, relative) -> DicomVolume:
    geometry = volume_geometry(frames, relative)
    notes = [*dict.fromkeys(note for record in {id(f.file): f.file for f in frames}.values()
                            for note in record.notes), *notes]
    volume = DicomVolume("", label, frames, geometry, warnings=[*notes, *geometry.warnings], qa=dict(geometry.qa))
    return volume


# --- geometry ----------------------------------------------------------------------------------

def _orthonormal_axes(orientation: Sequence[float]) -> tuple:
    """Row, column and normal unit vectors (LPS) from ImageOrientationPatient."""
    row = np.asarray(orientation[:3], dtype=float)
    column = np.asarray(orientation[3:], dtype=float)
    row = row / np.linalg.norm(row)
    column = column - np.dot(column, row) * row
    column = column / np.linalg.norm(column)
    return row, column, np.cross(row, column)


def orientation_code(direction: np.ndarray) -> str:
    """Three-letter code (e.g. 'LPS') of the directions the i, j, k axes point to."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        tuple(float(v) for v in np.asarray(direction).ravel()))


def volume_geometry(frames: Sequence[DicomFrame], relative=lambda p: Path(p).name) -> VolumeGeometry:
    """Measure a stack's geometry; irregular stacks get a regular output grid covering all slices.

    ``frames`` must be sorted along the normal (as :func:`plan_series` leaves them).
    """
    first = frames[0]
    pixel_spacing = first.pixel_spacing
    warnings_: list = []
    if pixel_spacing is None or min(pixel_spacing) <= 0:
        pixel_spacing = (1.0, 1.0)
        warnings_.append("no PixelSpacing: 1 mm pixels assumed")
    spacing_i, spacing_j = float(pixel_spacing[1]), float(pixel_spacing[0])
    rows, columns = first.file.rows, first.file.columns
    count = len(frames)
    declared = first.spacing_between or first.thickness
    if first.position is None or first.orientation is None:
        spacing_k = float(declared) if declared and declared > 0 else 1.0
        warnings_.append("no patient position/orientation: identity orientation and origin assumed, frames stacked "
                         f"{spacing_k:g} mm apart in instance order")
        qa = {"slices": count, "patient_geometry": False, "regularized": False,
              "orientation": "LPS", "slice_spacing_mm": spacing_k}
        return VolumeGeometry(np.zeros(3), np.array([spacing_i, spacing_j, spacing_k]), np.eye(3),
                              (columns, rows, count), np.arange(count) * spacing_k, np.zeros((count, 2)), True,
                              has_patient_geometry=False, qa=qa, warnings=warnings_)
    row, column, normal = _orthonormal_axes(first.orientation)
    raw = np.asarray(first.orientation, dtype=float)
    if abs(np.dot(raw[:3], raw[3:])) > ORIENTATION_TOLERANCE:
        warnings_.append(f"row and column directions are not orthogonal (cosine {np.dot(raw[:3], raw[3:]):.4f}): "
                         "column direction orthogonalized")
    positions = np.array([f.position for f in frames], dtype=float)
    coordinates = positions @ normal
    offsets = (positions - positions[0]) @ np.stack([row, column], axis=1)
    qa: dict = {"slices": count, "patient_geometry": True}
    origin = positions[0].copy()
    size = (columns, rows, count)
    regular = True
    if count == 1:
        spacing_k = float(declared) if declared and declared > 0 else 1.0
        qa["slice_spacing_mm"] = spacing_k
    else:
        gaps = np.diff(coordinates)
        median = float(np.median(gaps))
        shift = float(np.max(np.abs(offsets))) if count else 0.0
        uniform = float(np.max(gaps) - np.min(gaps)) <= POSITION_TOLERANCE_MM
        spacing_k = float((coordinates[-1] - coordinates[0]) / (count - 1))
        relative_s = coordinates - coordinates[0]
        denominator = float(np.dot(relative_s, relative_s))
        slopes = (relative_s @ offsets) / denominator if denominator > 0 else np.zeros(2)
        tilt = math.degrees(math.atan(float(np.hypot(*slopes))))
        qa.update({
            "acquired_spacing_mm": {"min": float(np.min(gaps)), "median": median, "max": float(np.max(gaps))},
            "uniform_spacing": bool(uniform),
            "gantry_tilt_deg": round(tilt, 4),
            "max_in_plane_shift_mm": round(shift, 4),
        })
        missing = []
        for index, gap in enumerate(gaps):
            multiple = int(round(gap / median)) if median > 0 else 0
            if multiple >= 2 and abs(gap - multiple * median) <= max(POSITION_TOLERANCE_MM, 0.1 * median):
                missing.append({"after_slice": index, "gap_mm": round(float(gap), 4), "missing": multiple - 1,
                                "between_files": [relative(frames[index].file.path),
                                                  relative(frames[index + 1].file.path)]})
        if missing:
            qa["missing_slices"] = missing
            for item in missing:
                warnings_.append(f"{item['missing']} missing slice(s) between slice {item['after_slice']} and "
                                 f"{item['after_slice'] + 1} ({item['between_files'][0]}, "
                                 f"{item['between_files'][1]}; gap {item['gap_mm']:g} mm vs {median:g} mm)")
        if not uniform or shift > POSITION_TOLERANCE_MM:
            regular = False
            if missing and all(int(round(g / median)) * median - g <= max(POSITION_TOLERANCE_MM, 0.1 * median)
                               for g in gaps):
                target = median
            else:
                smallest = float(np.min(gaps))
                target = smallest if smallest >= 0.5 * median else median
            extent = float(coordinates[-1] - coordinates[0])
            output_slices = int(round(extent / target)) + 1
            spacing_k = extent / (output_slices - 1)
            low, high = offsets.min(axis=0), offsets.max(axis=0)
            extra_i = int(math.ceil((high[0] - low[0]) / spacing_i - 1e-3))
            extra_j = int(math.ceil((high[1] - low[1]) / spacing_j - 1e-3))
            origin = positions[0] + low[0] * row + low[1] * column
            size = (columns + extra_i, rows + extra_j, output_slices)
            reasons = []
            if tilt > 0.01:
                reasons.append(f"gantry tilt of {tilt:.2f} degrees")
            elif shift > POSITION_TOLERANCE_MM:
                reasons.append(f"in-plane shifts of up to {shift:.3g} mm between slices")
            if not uniform:
                reasons.append(f"non-uniform slice spacing ({np.min(gaps):.4g} to {np.max(gaps):.4g} mm)")
            warnings_.append(f"{' and '.join(reasons)}: resampled onto a regular grid of {size[0]}x{size[1]}x{size[2]} "
                             f"voxels with {spacing_k:.4g} mm slice spacing (acquisition geometry regularized, "
                             "linear interpolation)")
        qa["slice_spacing_mm"] = spacing_k
    direction = np.stack([row, column, normal], axis=1)
    qa["regularized"] = not regular
    qa["orientation"] = orientation_code(direction)
    if not regular:
        qa["regularized_size"] = list(size)
    return VolumeGeometry(origin, np.array([spacing_i, spacing_j, spacing_k]), direction, size, coordinates,
                          offsets, regular, qa=qa, warnings=warnings_)


# --- pixels ------------------------------------------------------------------------------------

def stored_dtype(record: DicomFile) -> np.dtype:
    """numpy type of the stored values (before rescale) of a file."""
    if record.float_pixels:
        return np.dtype(np.float32 if record.bits_allocated == 32 else np.float64)
    if record.photometric == "PALETTE COLOR":
        return np.dtype(np.uint16 if record.bits_allocated > 8 else np.uint8)
    signed = record.pixel_representation == 1 and not record.is_colour
    if record.bits_allocated <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    if record.bits_allocated <= 16:
        return np.dtype(np.int16 if signed else np.uint16)
    if record.bits_allocated <= 32:
        return np.dtype(np.int32 if signed else np.uint32)
    return np.dtype(np.int64 if signed else np.uint64)


def _fast_path(record: DicomFile) -> bool:
    return (record.pixel_offset is not None and sys.byteorder == "little" and record.samples == 1
            and record.bits_allocated in (8, 16, 32, 64) and not record.is_colour
            and record.transfer_syntax in NATIVE_LITTLE_ENDIAN)


def _read_native(record: DicomFile, pairs: Sequence[tuple], out: np.ndarray) -> None:
    """Copy frames (frame index, output slice) of an uncompressed file straight into ``out``."""
    frame_bytes = record.frame_bytes
    with open(record.path, "rb", buffering=0) as stream:
        for frame_index, slice_index in pairs:
            stream.seek(record.pixel_offset + frame_index * frame_bytes)
            target = memoryview(out[slice_index]).cast("B")
            if stream.readinto(target) != frame_bytes:
                raise FileProblem(record.path, "truncated pixel data")
    shift = record.bits_allocated - record.bits_stored
    if shift and not record.float_pixels:
        # Unused high bits: mask (unsigned) or sign-extend (signed), as pydicom does.
        for _, slice_index in pairs:
            np.left_shift(out[slice_index], shift, out=out[slice_index])
            np.right_shift(out[slice_index], shift, out=out[slice_index])


def _decode(record: DicomFile) -> np.ndarray:
    """All frames of a file through pydicom's pixel-data handlers: (frames, rows, columns[, 3])."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(record.path, force=True)
            meta = getattr(dataset, "file_meta", None)
            if meta is None or "TransferSyntaxUID" not in meta:
                from pydicom.dataset import FileMetaDataset

                dataset.file_meta = meta if meta is not None else FileMetaDataset()
                dataset.file_meta.TransferSyntaxUID = record.transfer_syntax
            array = dataset.pixel_array
            if record.photometric == "PALETTE COLOR":
                from pydicom.pixels import apply_color_lut

                array = apply_color_lut(array, dataset)
                if array.dtype.itemsize == 2 and record.bits_allocated <= 8:
                    # 16-bit palette entries on an 8-bit image: 8-bit RGB, as GDCM gives it
                    array = (array >> 8 if array.max() > 255 else array).astype(np.uint8)
    except Exception as error:  # noqa: BLE001 - pydicom raises many types on bad pixel data
        message = " ".join(str(error).split())[:160]
        raise FileProblem(record.path, f"pixel data cannot be decoded ({type(error).__name__}: {message})") from None
    array = np.asarray(array)
    colour = array.ndim == (4 if record.number_of_frames > 1 else 3)
    if record.number_of_frames == 1:
        array = array[np.newaxis]
    if array.shape[0] != record.number_of_frames or array.shape[1:3] != (record.rows, record.columns):
        raise FileProblem(record.path, f"decoded pixel array has shape {array.shape}, expected "
                                       f"{record.number_of_frames} frame(s) of {record.rows}x{record.columns}")
    if colour != record.is_colour and not (record.photometric == "PALETTE COLOR" and colour):
        raise FileProblem(record.path, "decoded pixel data does not match SamplesPerPixel")
    return array


@dataclasses.dataclass
class LoadedVolume:
    """A loaded volume: the image (LPS geometry), QA measures and warnings for the user."""

    image: sitk.Image
    volume: DicomVolume
    qa: dict
    warnings: list
    invert_display: bool = False
    window: Optional[tuple] = None


def read_stored_pixels(volume: DicomVolume, report: Optional[ProgressReporter] = None,
                       relative=lambda p: Path(p).name) -> tuple:
    """(stored values array (N, rows, cols[, 3]), indices of frames that could not be read, reasons)."""
    report = report or ProgressReporter()
    frames = volume.frames
    first = frames[0].file
    colour = first.is_colour
    dtypes = {stored_dtype(f.file) for f in frames}
    dtype = np.result_type(*dtypes) if len(dtypes) > 1 else dtypes.pop()
    if colour and first.photometric == "PALETTE COLOR":
        dtype = np.dtype(np.uint16) if first.bits_allocated > 8 else np.dtype(np.uint8)
    shape = (len(frames), first.rows, first.columns) + ((3,) if colour else ())
    out = np.empty(shape, dtype=dtype)
    by_file: dict = {}
    for slice_index, frame in enumerate(frames):
        by_file.setdefault(id(frame.file), (frame.file, []))[1].append((frame.index, slice_index))
    failed, reasons = [], []
    total = len(by_file)
    for number, (record, pairs) in enumerate(by_file.values()):
        if number % 32 == 0:
            report(number / max(total, 1), f"reading pixels {number}/{total}")
        try:
            if _fast_path(record) and stored_dtype(record) == dtype:
                _read_native(record, pairs, out)
            else:
                decoded = _decode(record)
                for frame_index, slice_index in pairs:
                    out[slice_index] = decoded[frame_index]
        except FileProblem as problem:
            failed.extend(slice_index for _, slice_index in pairs)
            reasons.append(f"{relative(record.path)}: {problem.reason}")
        except OSError as error:
            failed.extend(slice_index for _, slice_index in pairs)
            reasons.append(f"{relative(record.path)}: cannot be read ({error.strerror or error})")
    return out, failed, reasons


def _rescale(stored: np.ndarray, frames: Sequence[DicomFrame]) -> np.ndarray:
    """Apply RescaleSlope/Intercept; integer output when every factor is integer, else float32."""
    slopes = np.array([f.slope for f in frames], dtype=float)
    intercepts = np.array([f.intercept for f in frames], dtype=float)
    if stored.ndim == 4 or stored.dtype.kind == "f":
        if np.all(slopes == 1) and np.all(intercepts == 0):
            return stored
        result = stored.astype(np.float32 if stored.dtype.itemsize <= 4 else np.float64)
        result *= slopes.reshape(-1, *([1] * (stored.ndim - 1))).astype(result.dtype)
        result += intercepts.reshape(-1, *([1] * (stored.ndim - 1))).astype(result.dtype)
        return result
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return stored
    uniform = np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0])
    slope, intercept = float(slopes[0]), float(intercepts[0])
    if uniform and slope.is_integer() and intercept.is_integer():
        low, high = int(stored.min()), int(stored.max())
        ends = [low * slope + intercept, high * slope + intercept]
        for candidate in (stored.dtype, np.dtype(np.int16), np.dtype(np.int32)):
            info = np.iinfo(candidate)
            if info.min <= min(ends) and max(ends) <= info.max:
                result = stored if candidate == stored.dtype else stored.astype(candidate)
                if slope != 1:
                    result *= int(slope)
                if intercept != 0:
                    result += candidate.type(int(intercept))
                return result
    result = stored.astype(np.float32)
    for index in range(result.shape[0]):
        if slopes[index] != 1:
            result[index] *= np.float32(slopes[index])
        if intercepts[index] != 0:
            result[index] += np.float32(intercepts[index])
    return result


def regularize(array: np.ndarray, geometry: VolumeGeometry, fill: float) -> np.ndarray:
    """Resample a stack of parallel slices at arbitrary positions onto ``geometry``'s regular grid.

    Each output voxel takes the bilinear in-plane value of the two acquired slices that
    bracket it along the normal (orthogonal projection onto each slice plane), blended
    linearly by normal distance; voxels outside the acquired slices get ``fill``.
    """
    size_i, size_j, size_k = geometry.size
    spacing_i, spacing_j, spacing_k = (float(v) for v in geometry.spacing)
    low = geometry.in_plane_offsets.min(axis=0)
    shifts = (geometry.in_plane_offsets - low) / np.array([spacing_i, spacing_j])  # slice k's pixel shift
    coordinates = geometry.slice_positions - geometry.slice_positions[0]
    work = np.float64 if array.dtype.itemsize > 4 else np.float32
    out = np.empty((size_k,) + (size_j, size_i) + array.shape[3:], dtype=work)
    cache: dict = {}

    def placed(index: int) -> np.ndarray:
        if index not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            cache[index] = _translate(array[index].astype(work), shifts[index], (size_j, size_i), fill)
        return cache[index]

    for k in range(size_k):
        target = k * spacing_k
        upper = int(np.searchsorted(coordinates, target - 1e-6))
        upper = min(max(upper, 0), len(coordinates) - 1)
        if abs(coordinates[upper] - target) <= 1e-6 or upper == 0:
            out[k] = placed(upper)
            continue
        lower = upper - 1
        weight = (target - coordinates[lower]) / (coordinates[upper] - coordinates[lower])
        out[k] = placed(lower) * work(1 - weight) + placed(upper) * work(weight)
    if array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        np.rint(out, out=out)
        np.clip(out, info.min, info.max, out=out)
        return out.astype(array.dtype)
    return out.astype(array.dtype, copy=False)


def _translate(image: np.ndarray, shift_ij: np.ndarray, shape_ji: tuple, fill: float) -> np.ndarray:
    """Place a 2-D (rows, cols[, c]) image on a larger canvas shifted by fractional (i, j) pixels (bilinear)."""
    canvas = np.full(shape_ji + image.shape[2:], fill, dtype=image.dtype)
    whole_i, whole_j = int(math.floor(shift_ij[0] + 1e-9)), int(math.floor(shift_ij[1] + 1e-9))
    fraction_i, fraction_j = shift_ij[0] - whole_i, shift_ij[1] - whole_j
    if abs(fraction_i) < 1e-6 and abs(fraction_j) < 1e-6:
        rows, columns = image.shape[:2]
        canvas[whole_j:whole_j + rows, whole_i:whole_i + columns] = image[:shape_ji[0] - whole_j,
                                                                          :shape_ji[1] - whole_i]
        return canvas
    # Sample the image at canvas pixel (j, i) -> image pixel (j - shift_j, i - shift_i), bilinear.
    padded = np.full((image.shape[0] + 2, image.shape[1] + 2) + image.shape[2:], fill, dtype=image.dtype)
    padded[1:-1, 1:-1] = image
    j = np.arange(shape_ji[0]) - shift_ij[1] + 1
    i = np.arange(shape_ji[1]) - shift_ij[0] + 1
    j0 = np.floor(j).astype(int)
    i0 = np.floor(i).astype(int)
    wj = (j - j0).astype(image.dtype)
    wi = (i - i0).astype(image.dtype)
    valid_j = (j0 >= 0) & (j0 + 1 < padded.shape[0])
    valid_i = (i0 >= 0) & (i0 + 1 < padded.shape[1])
    j0c, i0c = np.clip(j0, 0, padded.shape[0] - 2), np.clip(i0, 0, padded.shape[1] - 2)
    top = padded[j0c][:, i0c]
    top_right = padded[j0c][:, i0c + 1]
    bottom = padded[j0c + 1][:, i0c]
    bottom_right = padded[j0c + 1][:, i0c + 1]
    extra = (slice(None),) * 2 + (np.newaxis,) * (image.ndim - 2)
    wi_ = wi[np.newaxis, :][extra]
    wj_ = wj[:, np.newaxis][extra]
    result = (top * (1 - wi_) + top_right * wi_) * (1 - wj_) + (bottom * (1 - wi_) + bottom_right * wi_) * wj_
    mask = valid_j[:, np.newaxis] & valid_i[np.newaxis, :]
    canvas[mask] = result[mask]
    return canvas


_META_TYPES = {(8, 0): "MET_UCHAR", (8, 1): "MET_CHAR", (16, 0): "MET_USHORT", (16, 1): "MET_SHORT",
               (32, 0): "MET_UINT", (32, 1): "MET_INT"}


def _bulk_read_with_itk(volume: DicomVolume) -> Optional[sitk.Image]:
    """The stored values of a plain uncompressed series, read by ITK straight into the image buffer.

    Eligible: one single-frame, native little-endian, grey-scale file per slice, all alike,
    each ending with its pixel data. A MetaImage header listing the files in slice order
    (``ElementDataFile = LIST``, ``HeaderSize = -1``: data at the end of each file) lets
    ITK's reader fill one buffer without an intermediate numpy array, which halves the memory
    traffic of a large series. Returns None when not eligible or when ITK refuses.
    """
    import tempfile

    records = [frame.file for frame in volume.frames]
    first = records[0]
    element_type = _META_TYPES.get((first.bits_allocated, first.pixel_representation))
    if element_type is None or len({id(r) for r in records}) != len(records):
        return None
    for record in records:
        if not (_fast_path(record) and record.number_of_frames == 1 and record.rows == first.rows
                and record.columns == first.columns and record.bits_allocated == first.bits_allocated
                and record.bits_stored == first.bits_stored
                and record.pixel_representation == first.pixel_representation
                and record.pixel_offset + record.frame_bytes == record.size_bytes):
            return None
        name = os.fspath(record.path)
        if "\n" in name or "\r" in name or name != name.strip():
            return None
    header = "\n".join([
        "ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
        f"DimSize = {first.columns} {first.rows} {len(records)}", f"ElementType = {element_type}",
        "HeaderSize = -1", "ElementDataFile = LIST",
        *(os.path.abspath(record.path) for record in records), ""])
    handle, listing = tempfile.mkstemp(prefix="medanalysis-slices-", suffix=".mhd")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(header)
        image = sitk.ReadImage(listing)
    except RuntimeError:
        return None
    finally:
        os.unlink(listing)
    if image.GetSize() != (first.columns, first.rows, len(records)):
        return None
    return image


def _rescale_itk(image: sitk.Image, frames: Sequence[DicomFrame]) -> Optional[sitk.Image]:
    """RescaleSlope/Intercept (uniform over the slices) applied in place on an ITK image, with
    the output type rules of :func:`_rescale`; None when unused high bits are set (the numpy
    path then masks or sign-extends them as pydicom does)."""
    first = frames[0].file
    view = sitk.GetArrayViewFromImage(image)
    low = high = None
    if first.bits_stored < first.bits_allocated:
        low, high = int(view.min()), int(view.max())
        if first.pixel_representation == 1:
            limit = 1 << (first.bits_stored - 1)
            if low < -limit or high >= limit:
                return None
        elif high >= 1 << first.bits_stored:
            return None
    slopes = {frame.slope for frame in frames}
    intercepts = {frame.intercept for frame in frames}
    if len(slopes) != 1 or len(intercepts) != 1:
        return None
    slope, intercept = slopes.pop(), intercepts.pop()
    if slope == 1 and intercept == 0:
        return image
    if float(slope).is_integer() and float(intercept).is_integer():
        if low is None:
            low, high = int(view.min()), int(view.max())
        ends = [low * slope + intercept, high * slope + intercept]
        stored = view.dtype
        for candidate, pixel_id in ((stored, image.GetPixelID()), (np.dtype(np.int16), sitk.sitkInt16),
                                    (np.dtype(np.int32), sitk.sitkInt32)):
            info = np.iinfo(candidate)
            if info.min <= min(ends) and max(ends) <= info.max:
                if pixel_id != image.GetPixelID():
                    image = sitk.Cast(image, pixel_id)
                if slope != 1:
                    image *= int(slope)
                if intercept != 0:
                    image += int(intercept)
                return image
    image = sitk.Cast(image, sitk.sitkFloat32)
    if slope != 1:
        image *= float(slope)
    if intercept != 0:
        image += float(intercept)
    return image


def _load_with_numpy(volume: DicomVolume, report: ProgressReporter, regularize_geometry: bool, relative,
                     warnings_: list) -> tuple:
    """(image, volume, warnings, qa) through numpy: any syntax, left-out files, regularization."""
    stored, failed, reasons = read_stored_pixels(volume, report.sub(0.0, 0.8), relative)
    if failed:
        keep = [index for index in range(len(volume.frames)) if index not in set(failed)]
        if not keep:
            raise InputError(relative(volume.frames[0].file.path),
                             f"no slice of the series could be read ({reasons[0]})")
        for reason in reasons:
            warnings_.append(f"left out {reason}")
        stored = stored[keep]
        frames = [volume.frames[index] for index in keep]
        geometry = volume_geometry(frames, relative)
        warnings_ = [w for w in warnings_ if w not in volume.geometry.warnings] + geometry.warnings
        volume = dataclasses.replace(volume, frames=frames, geometry=geometry, qa=dict(geometry.qa))
    report(0.8, "applying rescale slope/intercept")
    values = _rescale(stored, volume.frames)
    geometry = volume.geometry
    qa = dict(volume.qa)
    qa["left_out_files"] = len(reasons)
    if not geometry.regular:
        if regularize_geometry:
            report(0.85, "resampling onto a regular grid")
            fill = float(values.min()) if values.size else 0.0
            values = regularize(values, geometry, fill)
            qa["fill_value"] = fill
        else:
            qa["regularized"] = False
            geometry = dataclasses.replace(geometry, origin=np.asarray(volume.frames[0].position, dtype=float),
                                           size=(values.shape[2], values.shape[1], values.shape[0]))
            warnings_ = [w for w in warnings_ if "resampled onto a regular grid" not in w]
            warnings_.append("irregular acquisition geometry NOT corrected (regularization off): positions in this "
                             "volume are approximate")
    image = sitk.GetImageFromArray(values, isVector=values.ndim == 4)
    return image, dataclasses.replace(volume, geometry=geometry), warnings_, qa


def check_volume_memory(volume: DicomVolume, relative=lambda p: Path(p).name) -> None:
    """Refuse, before any pixel is decoded, a volume whose stored frames or regularized grid
    would not fit the memory budget (declared frame counts, rows x columns, or slice positions
    that spread a few slices over an enormous grid)."""
    from .imageguard import memory_budget_bytes

    first = volume.frames[0].file
    samples = 3 if first.is_colour else 1
    stored = float(len(volume.frames)) * first.rows * first.columns * samples * max(first.bits_allocated // 8, 1)
    grid = float(np.prod([float(v) for v in volume.geometry.size])) * samples * 4  # float32 after rescaling
    needed = stored + grid  # both are held while the image is built
    budget = memory_budget_bytes()
    if needed > budget:
        raise InputError(relative(first.path), f"DICOM volume of {len(volume.frames)} frames of {first.rows}x"
                                               f"{first.columns} on a grid of {list(volume.geometry.size)} voxels needs "
                                               f"{needed / 2**30:.1f} GiB, more than the memory budget of "
                                               f"{budget / 2**30:.1f} GiB (set MEDANALYSIS_MAX_MEMORY to allow more)")


def load_volume(volume: DicomVolume, report: Optional[ProgressReporter] = None, regularize_geometry: bool = True,
                relative=lambda p: Path(p).name) -> LoadedVolume:
    """Read, rescale and (where needed) regularize a planned volume into a SimpleITK image (LPS).

    Files whose pixels cannot be read are left out with a warning naming them; the
    geometry is then measured again on the remaining slices.

    Raises:
        InputError: no slice of the volume could be read.
    """
    report = report or ProgressReporter()
    check_volume_memory(volume, relative)
    warnings_ = list(volume.warnings)
    qa = dict(volume.qa)
    image = None
    if volume.geometry.regular and len({(f.slope, f.intercept) for f in volume.frames}) == 1:
        report(0.0, "reading pixels")
        bulk = _bulk_read_with_itk(volume)
        image = _rescale_itk(bulk, volume.frames) if bulk is not None else None
        del bulk  # in-place arithmetic shares the buffer: a second owner would make SetOrigin copy it all
        qa["left_out_files"] = 0
    if image is None:
        image, volume, warnings_, qa = _load_with_numpy(volume, report, regularize_geometry, relative, warnings_)
    geometry = volume.geometry
    report(0.95, "building the image")
    image.SetOrigin(tuple(float(v) for v in geometry.origin))
    image.SetSpacing(tuple(float(v) for v in geometry.spacing))
    image.SetDirection(tuple(float(v) for v in geometry.direction.ravel()))
    first = volume.frames[0]
    qa["pixel_type"] = image.GetPixelIDTypeAsString()
    qa["rescale"] = {"slope": first.slope, "intercept": first.intercept,
                     "uniform": len({(f.slope, f.intercept) for f in volume.frames}) == 1}
    invert = first.file.photometric == "MONOCHROME1"
    if invert:
        qa["monochrome1"] = True
        warnings_.append("MONOCHROME1: values kept as stored x slope + intercept; display inverted")
    report(1.0, "volume loaded")
    return LoadedVolume(image, volume, qa, warnings_, invert_display=invert, window=first.window)


def summarize_volume(volume: DicomVolume) -> dict:
    """JSON-able description of a planned volume (no patient identifiers)."""
    geometry = volume.geometry
    return {
        "id": volume.volume_id,
        "label": volume.label,
        "slices": len(volume.frames),
        "size": [int(v) for v in geometry.size],
        "spacing_mm": [round(float(v), 6) for v in geometry.spacing],
        "origin_lps_mm": [round(float(v), 6) for v in geometry.origin],
        "orientation": volume.qa.get("orientation", "LPS"),
        "colour": volume.frames[0].file.is_colour,
        "warnings": list(volume.warnings),
        "qa": volume.qa,
    }
