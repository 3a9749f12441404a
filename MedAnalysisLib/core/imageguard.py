"""Checks on an image file's header before any voxel is allocated.

Every image file the product opens goes through :func:`check_image_file` (from
``imageio.read_image`` / ``read_image_header``):

* detached data files (NRRD ``data file:``, MetaImage ``ElementDataFile``, lists and patterns)
  must lie inside the header's own folder: a header cannot make us read ``/etc/passwd``;
* NIfTI-1 headers: dimensions and voxel sizes must be positive and finite, the affine finite,
  and the data the header declares must be present (file size, or the gzip trailer);
* the voxel count times the pixel size must fit the memory budget
  (``MEDANALYSIS_MAX_MEMORY`` bytes, default half of the available memory);
* spacing, origin and direction from ITK's reading of the header must be finite and usable.

Each problem is an :class:`InputError` naming the file and the reason.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import InputError

HEADER_TEXT_LIMIT = 1 << 16
MAX_EXTENT_MM = 10_000.0  # 10 m along an axis: no scanner images more; larger means a header that lies


def _pixel_bytes(pixel_id: int) -> int:
    """Bytes of one component of a SimpleITK pixel type (8 when unknown: the safe side)."""
    import SimpleITK as sitk

    sizes = {}
    for bytes_, names in ((1, ("UInt8", "Int8")), (2, ("UInt16", "Int16")), (4, ("UInt32", "Int32", "Float32")),
                          (8, ("UInt64", "Int64", "Float64"))):
        for name in names:
            for prefix in ("sitk", "sitkVector"):
                value = getattr(sitk, prefix + name, None)
                if value is not None:
                    sizes[value] = bytes_
    return sizes.get(pixel_id, 8)


def memory_budget_bytes() -> int:
    """Largest image (bytes) we agree to allocate: MEDANALYSIS_MAX_MEMORY or half the available memory."""
    value = os.environ.get("MEDANALYSIS_MAX_MEMORY", "").strip()
    if value:
        try:
            return int(float(value))
        except ValueError:
            raise InputError("MEDANALYSIS_MAX_MEMORY", f"expected a number of bytes, got '{value}'") from None
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 8 << 30
    return int(available // 2)


def check_allocation(subject, size, bytes_per_voxel: float, what: str) -> None:
    """Refuse a grid of ``size`` voxels (any sequence of counts) that would not fit the memory
    budget, before it is allocated (``what`` says which grid, for the message)."""
    voxels = float(np.prod([float(v) for v in size], dtype=np.float64))
    needed = voxels * bytes_per_voxel
    budget = memory_budget_bytes()
    if not math.isfinite(needed) or needed > budget or any(float(v) >= 2 ** 31 for v in size):
        shown = [int(v) if math.isfinite(float(v)) and float(v) < 1e15 else float(v) for v in size]
        raise InputError(subject, f"{what} of {shown} voxels needs {needed / 2**30:.3g} GiB, more than the memory "
                                  f"budget of {budget / 2**30:.1f} GiB (set MEDANALYSIS_MAX_MEMORY to allow more)")


def _header_text(path: Path) -> list[str]:
    with open(path, "rb") as handle:
        raw = handle.read(HEADER_TEXT_LIMIT)
    return raw.decode("latin-1").splitlines()


def detached_data_files(path: Path) -> list[str]:
    """File names a NRRD/MetaImage header points its voxel data at (empty when inline)."""
    name = path.name.lower()
    lines = _header_text(path)
    if name.endswith((".nhdr", ".nrrd")):
        if not lines or not lines[0].startswith("NRRD"):
            return []
        for index, line in enumerate(lines):
            if not line.strip():
                break  # end of the header
            key, _, value = line.partition(":")
            if key.strip().lower() in ("data file", "datafile"):
                return _listed(value.strip(), lines[index + 1:])
        return []
    if name.endswith((".mhd", ".mha")):
        for index, line in enumerate(lines):
            key, _, value = line.partition("=")
            if key.strip().lower() == "elementdatafile":
                value = value.strip()
                if value.upper() == "LOCAL":
                    return []
                return _listed(value, lines[index + 1:])
    return []


def _listed(value: str, following: list[str]) -> list[str]:
    if value.upper().startswith("LIST"):
        return [line.strip() for line in following if line.strip()]
    if "%" in value:  # pattern: "fmt min max step [subdim]": the folder part is what matters
        return [value.split()[0]]
    return [value]


def check_detached(path: Path) -> None:
    folder = os.path.realpath(path.parent)
    for name in detached_data_files(path):
        if os.path.isabs(name) or name.startswith("~"):
            raise InputError(path, f"header points its data at an absolute path ('{name}'): refused, the data "
                                   "file must lie beside the header")
        target = os.path.realpath(os.path.join(folder, name))
        if os.path.commonpath([folder, target]) != folder:
            raise InputError(path, f"header points its data outside its folder ('{name}'): refused")


def check_nifti1(path: Path) -> None:
    """Raw NIfTI-1 header checks that ITK would silently 'repair' (zero pixdim, missing voxels)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(352)
    except (OSError, EOFError) as error:
        raise InputError(path, f"not a readable image (NIfTI: {error})") from None
    if len(header) < 348:
        raise InputError(path, f"not a readable image (NIfTI header truncated: {len(header)} of 348 bytes)")
    for endian in ("<", ">"):
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            break
    else:
        sizes = {struct.unpack(e + "i", header[:4])[0] for e in "<>"}
        if 540 in sizes:
            return  # NIfTI-2: ITK reads and checks it
        raise InputError(path, f"not a readable image (NIfTI header size {min(sizes, key=abs)}, expected 348)")
    dims = struct.unpack(endian + "8h", header[40:56])
    datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
    pixdim = struct.unpack(endian + "8f", header[76:108])
    vox_offset = struct.unpack(endian + "f", header[108:112])[0]
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise InputError(path, f"NIfTI header declares {ndim} dimensions")
    if any(d <= 0 for d in dims[1:ndim + 1]):
        raise InputError(path, f"NIfTI header declares a zero or negative size {list(dims[1:ndim + 1])}")
    spatial = pixdim[1:min(ndim, 3) + 1]
    if any(not math.isfinite(v) or v <= 0 for v in spatial):
        raise InputError(path, f"NIfTI header declares zero, negative or non-finite voxel sizes {list(spatial)}")
    qform_code, sform_code = struct.unpack(endian + "2h", header[252:256])
    quatern = struct.unpack(endian + "6f", header[256:280])
    srow = struct.unpack(endian + "12f", header[280:328])
    if (qform_code > 0 and not all(math.isfinite(v) for v in quatern)) or \
            (sform_code > 0 and not all(math.isfinite(v) for v in srow)):
        raise InputError(path, "NIfTI header holds a non-finite orientation (NaN or infinite qform/sform)")
    if sform_code > 0 and abs(np.linalg.det(np.array(srow).reshape(3, 4)[:, :3])) < 1e-12:
        raise InputError(path, "NIfTI header holds a degenerate sform (zero determinant)")
    if bitpix <= 0 or not math.isfinite(vox_offset) or vox_offset < 0:
        raise InputError(path, f"NIfTI header declares bitpix {bitpix}, vox_offset {vox_offset}")
    expected = int(vox_offset) + int(np.prod([int(d) for d in dims[1:ndim + 1]], dtype=np.float64)) * bitpix // 8
    available = _data_length(path)
    if available is not None and available < expected:
        raise InputError(path, f"NIfTI data truncated: the header declares {expected} bytes, the file holds "
                               f"{available}")


def _data_length(path: Path) -> Optional[int]:
    """Uncompressed length of the file (gzip: from its trailer when there is one member and < 4 GiB)."""
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        return size
    with open(path, "rb") as handle:
        handle.seek(max(size - 4, 0))
        trailer = handle.read(4)
    if len(trailer) < 4:
        return 0
    declared = struct.unpack("<I", trailer)[0]
    if declared < (size - 18) // 1032:  # below any possible deflate ratio: several members or > 4 GiB
        return None
    return _stream_length(path, limit=declared + 1)


def _stream_length(path: Path, limit: int, skip: int = 0) -> int:
    """Bytes actually decompressible from ``skip`` on (read in bounded chunks, stops after ``limit``)."""
    total = 0
    try:
        with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as handle:
            raw.seek(skip)
            while total < limit:
                chunk = handle.read(1 << 22)
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, gzip.BadGzipFile):
        pass  # a truncated stream: what came out is what there is
    return total


def check_reader(path: Path, reader) -> None:
    """Size against the memory budget and usable geometry, from an ITK reader with the header read."""
    size = [int(v) for v in reader.GetSize()]
    if any(v <= 0 for v in size):
        raise InputError(path, f"image size {size} has an empty dimension")
    components = max(int(reader.GetNumberOfComponents()), 1)
    check_allocation(path, size, _pixel_bytes(reader.GetPixelID()) * components, "image")
    spacing, origin, direction = reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise InputError(path, f"voxel spacing {list(spacing)} is not a set of positive numbers")
    if not all(math.isfinite(v) for v in origin) or not all(math.isfinite(v) for v in direction):
        raise InputError(path, "image origin or orientation holds NaN or infinite values")
    extent = [n * d for n, d in zip(size[:3], spacing[:3])]
    if max(extent) > MAX_EXTENT_MM:
        raise InputError(path, f"image extent {[round(v, 1) for v in extent]} mm exceeds {MAX_EXTENT_MM / 1000:g} m "
                               f"along an axis: the voxel spacing {list(spacing)} or size {size} is wrong")
    if max(abs(v) for v in origin[:3]) > MAX_EXTENT_MM * 100:
        raise InputError(path, f"image origin {list(origin)} mm is implausibly far from the scanner's centre")
    dimension = len(size)
    if abs(np.linalg.det(np.array(direction).reshape(dimension, dimension))) < 1e-6:
        raise InputError(path, "image orientation (direction cosines) is degenerate")


NRRD_TYPE_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                     "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                     "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                     "double"), 8),
}


def nrrd_fields(path: Path) -> tuple[dict, int]:
    """(lower-case field -> value, byte length of the header including its blank line) of an
    attached-header NRRD; ({}, 0) when the file does not start with the NRRD magic."""
    with open(path, "rb") as handle:
        raw = handle.read(HEADER_TEXT_LIMIT)
    if not raw.startswith(b"NRRD"):
        return {}, 0
    fields, offset = {}, 0
    for line in raw.split(b"\n"):
        offset += len(line) + 1
        text = line.decode("latin-1").rstrip("\r")
        if not text.strip():
            return fields, offset
        if text.startswith("#") or ":=" in text or ":" not in text:
            continue
        key, _, value = text.partition(":")
        fields[key.strip().lower()] = value.strip()
    raise InputError(path, f"NRRD header has no end within its first {HEADER_TEXT_LIMIT} bytes")


def check_nrrd(path: Path) -> None:
    """Sizes, type and data length of a NRRD file (attached data or a detached file beside it),
    checked in Python before the C++ readers see it: a truncated or inflated file is refused."""
    fields, header_bytes = nrrd_fields(path)
    if not fields:
        return
    try:
        sizes = [int(v) for v in fields.get("sizes", "").split()]
    except ValueError:
        raise InputError(path, f"NRRD sizes '{fields.get('sizes')}' are not whole numbers") from None
    if not sizes or any(v <= 0 for v in sizes):
        raise InputError(path, f"NRRD sizes {sizes or fields.get('sizes')} are missing, zero or negative")
    item = NRRD_TYPE_BYTES.get(fields.get("type", "").lower())
    if item is None:
        raise InputError(path, f"NRRD type '{fields.get('type')}' is not a known pixel type")
    check_allocation(path, sizes, item, "NRRD data")
    expected = float(np.prod([float(v) for v in sizes])) * item
    encoding = fields.get("encoding", "raw").lower()
    detached = fields.get("data file") or fields.get("datafile")
    if detached:
        names = detached_data_files(path)
        if len(names) != 1 or "%" in detached:
            return  # lists and patterns: ITK checks each slice file
        source, skip = Path(os.path.realpath(path.parent / names[0])), 0
        if not source.is_file():
            raise InputError(path, f"NRRD data file '{names[0]}' does not exist")
    else:
        source, skip = path, header_bytes
    if encoding in ("raw",):
        available = source.stat().st_size - skip
    elif encoding in ("gzip", "gz"):
        available = _stream_length(source, limit=int(expected) + 1, skip=skip)
    elif encoding in ("hex",):  # two characters per byte
        available = (source.stat().st_size - skip) / 2
    elif encoding in ("text", "txt", "ascii"):  # at least one digit and one separator per value
        available = (source.stat().st_size - skip + 1) / 2 * item
    else:
        return  # bzip2: ITK reads (and checks) it
    if available < expected:
        raise InputError(path, f"NRRD data truncated: sizes {sizes} of {item}-byte values need {int(expected)} bytes, "
                               f"the file holds {max(int(available), 0)}")


def check_image_file(path: Path) -> Optional[str]:
    """Header checks that need no ITK reader (detached data, NIfTI-1 raw header, NRRD data length);
    'dicom' for a DICOM file with image pixels (to be read by our DICOM reader, never by GDCM)."""
    name = path.name.lower()
    if name.endswith((".nhdr", ".nrrd", ".mhd", ".mha")):
        check_detached(path)
    if name.endswith((".nhdr", ".nrrd")):
        check_nrrd(path)
    if name.endswith((".nii", ".nii.gz")):
        check_nifti1(path)
    elif not name.endswith((".nhdr", ".nrrd", ".mhd", ".mha")):
        return check_dicom(path)
    return None


def check_dicom(path: Path) -> Optional[str]:
    """A DICOM file read as an image (GDCM would zero-fill missing pixels or decode any frame count)
    gets the importer's header checks first: truncated pixel data, impossible frame counts."""
    from .dicom import FileProblem, read_header

    try:
        record = read_header(path)
    except FileProblem as problem:
        raise InputError(path, problem.reason) from None
    if record is None:
        return None
    if record.problem:
        raise InputError(path, record.problem)
    if not record.has_pixels:  # never handed to GDCM: on a damaged header it can allocate gigabytes
        raise InputError(path, "DICOM object without image pixel data (no Rows/Columns or no PixelData)")
    return "dicom"
