"""DICOM series: header-only scanning, grouping into loadable volumes, geometry QA, loading.

Pipeline (every step pure: pydicom + numpy + SimpleITK, no MRML):

1. :func:`read_header` (:mod:`.header`) parses one file up to its pixel data (``stop_before_pixels``) and
   expands it into :class:`DicomFrame` records: one per single-frame file, one per frame of
   an enhanced multi-frame object (per-frame functional groups).
2. :func:`plan_series` (:mod:`.planning`) groups frames by study and series and splits a series into
   :class:`DicomVolume` records when it mixes sizes, orientations, pixel spacings, echoes,
   stacks or acquisitions, or repeats positions (multi-volume / 4-D series: one volume per
   time point). Slices are ordered by ImagePositionPatient projected on the slice normal,
   never by file name or InstanceNumber.
3. :func:`volume_geometry` (:mod:`.stack`) measures the acquisition geometry: slice spacing and its
   variation, gantry tilt, in-plane shifts, missing slices. Irregular stacks are resampled
   onto a regular grid by :func:`load_volume` (as Slicer's DICOM scalar volume plugin
   regularizes acquisition geometry), with a warning saying so.
4. :func:`load_volume` (:mod:`.pixels`) reads the pixels (uncompressed little-endian data straight from the
   file into the output array; compressed syntaxes through pydicom's pixel-data plugins),
   applies RescaleSlope/Intercept and returns a SimpleITK image.

Modules, each importing only those before it: :mod:`.records` (constants, :class:`FileProblem`,
the dataclasses), :mod:`.values` (header element accessors such as ``_text``), :mod:`.stack`,
:mod:`.header`, :mod:`.planning`, :mod:`.pixels`. Everything callers use is re-exported here.

Geometry convention: DICOM patient coordinates are LPS, the same as ITK/SimpleITK, so the
image's origin/spacing/direction are the DICOM values themselves (no flip). Voxel axes:
i along the row direction (ImageOrientationPatient[0:3], spacing PixelSpacing[1]), j along
the column direction (ImageOrientationPatient[3:6], spacing PixelSpacing[0]), k along the
slice normal i x j. Arrays are (k, j, i) ordered, as ``sitk.GetArrayFromImage`` returns.

Nothing here logs or returns patient names or IDs.
"""

from .header import RawElement, RawHeader, full_header, read_header
from .pixels import (LoadedVolume, check_volume_memory, load_volume, read_stored_pixels, regularize, stored_dtype,
                     summarize_volume)
from .planning import plan_series, scan_files
from .records import (DEFLATED_LE, DUPLICATE_TOLERANCE_MM, EXPLICIT_BE, EXPLICIT_LE, HEADER_CHUNK_BYTES, IMPLICIT_LE,
                      NATIVE_LITTLE_ENDIAN, ORIENTATION_TOLERANCE, POSITION_TOLERANCE_MM, SLAB_GAP_FACTOR, DicomFile,
                      DicomFrame, DicomSeries, DicomVolume, FileProblem, ScanResult, VolumeGeometry)
from .stack import orientation_code, volume_geometry
# Header value accessors, used as dicom._text(...) by the import session and the tests.
from .values import _float, _floats, _int, _key, _strings, _tag, _text, _us

__all__ = [
    "DEFLATED_LE", "DUPLICATE_TOLERANCE_MM", "EXPLICIT_BE", "EXPLICIT_LE", "HEADER_CHUNK_BYTES", "IMPLICIT_LE",
    "NATIVE_LITTLE_ENDIAN", "ORIENTATION_TOLERANCE", "POSITION_TOLERANCE_MM", "SLAB_GAP_FACTOR",
    "DicomFile", "DicomFrame", "DicomSeries", "DicomVolume", "FileProblem", "LoadedVolume", "RawElement", "RawHeader",
    "ScanResult", "VolumeGeometry",
    "check_volume_memory", "full_header", "load_volume", "orientation_code", "plan_series", "read_header",
    "read_stored_pixels", "regularize", "scan_files", "stored_dtype", "summarize_volume", "volume_geometry",
]
