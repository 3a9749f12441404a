"""DICOM records: constants, :class:`FileProblem` and the dataclasses the other modules pass around.

:class:`DicomFile` (header facts of one file), :class:`DicomFrame` (one 2-D image),
:class:`VolumeGeometry`, :class:`DicomVolume`, :class:`DicomSeries` and :class:`ScanResult`.
No parsing or pixel reading here: this module imports nothing else of the package.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

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
