"""Reading and writing image files with clear errors and all-or-nothing writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from . import geometry, imageguard
from .errors import InputError
from .progress import atomic_output, output_suffix
from .provenance import provenance_json, sidecar_path

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")


def check_input_file(path: "str | os.PathLike") -> Path:
    """Existing, readable, non-empty regular file, else :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a file")
    if not os.access(path, os.R_OK):
        raise InputError(path, "permission denied (file is not readable)")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    return path


def check_output_paths(inputs, outputs, folder_outputs=()) -> None:
    """Refuse, before any work, outputs that would replace an input or another output, outputs
    that are folders, and outputs in folders that do not exist or cannot be written.

    ``inputs``/``outputs``: paths or None; ``folder_outputs``: output folders (reports). Paths are
    compared after resolving symlinks, ``..`` and relative spellings.
    """
    sources = {}
    for path in inputs:
        if path:
            sources[os.path.realpath(path)] = path
    seen = {}
    for path in list(outputs) + list(folder_outputs):
        if not path:
            continue
        real = os.path.realpath(path)
        if real in sources:
            raise InputError(path, f"output would replace the input {sources[real]}: choose another name")
        if real in seen:
            raise InputError(path, f"the same file is given for two outputs ({seen[real]})")
        seen[real] = path
        target = Path(real)
        if path in outputs and target.is_dir():
            raise InputError(path, "is a folder, expected an output file name")
        parent = target if path in folder_outputs and target.is_dir() else target.parent
        if path in folder_outputs and not target.exists():
            parent = target.parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
        if not parent.is_dir():
            raise InputError(path, f"output folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(path, f"output folder {parent} is not writable")


def read_image(path: "str | os.PathLike", pixel_type: Optional[int] = None) -> sitk.Image:
    """Read an image file (NIfTI, NRRD, MHA, ..., or one DICOM file), raising InputError on failure."""
    reader = read_image_header(path)
    path = Path(reader.GetFileName())
    if isinstance(reader, DicomFileHeader):
        return reader.image if pixel_type is None else sitk.Cast(reader.image, pixel_type)
    try:
        if pixel_type is not None:
            reader.SetOutputPixelType(pixel_type)
        image = reader.Execute()
    except RuntimeError as error:
        reason = _itk_reason(error)
        raise InputError(path, f"not a readable image ({reason})") from None
    return image


class DicomFileHeader:
    """What ``read_image_header`` gives for one DICOM file: the image loaded by our own DICOM reader
    (headers checked against the pixel data and the memory budget before decoding; GDCM never
    probes a damaged file), with the few reader methods callers use."""

    def __init__(self, path: Path, image: sitk.Image):
        self.path, self.image = path, image

    def GetFileName(self) -> str:  # noqa: N802 - the SimpleITK reader's names
        return str(self.path)

    def __getattr__(self, name):  # GetSize, GetSpacing, GetOrigin, GetDirection, GetDimension, GetPixelID, ...
        if name.startswith("Get"):
            return getattr(self.image, name)
        raise AttributeError(name)


def read_dicom_file(path: Path) -> sitk.Image:
    """The (first) image of one DICOM file, through the importer's checked reader."""
    from .dicom_import import ImportSession

    with ImportSession(path) as session:
        items = [item for item in session.planned() if item.kind != "image"]
        if not items:
            raise InputError(path, "DICOM file holds no image")
        return session.load(items[0])[0].image


def read_image_header(path: "str | os.PathLike") -> "sitk.ImageFileReader | DicomFileHeader":
    """Reader with the header read (size, spacing, metadata) but no pixel data."""
    path = check_input_file(path)
    if imageguard.check_image_file(path) == "dicom":  # detached data outside the folder, raw NIfTI header lies
        return DicomFileHeader(path, read_dicom_file(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(path, f"not a readable image ({_itk_reason(error)})") from None
    imageguard.check_reader(path, reader)  # memory budget, usable geometry: before any voxel is read
    return reader


def _itk_reason(error: Exception) -> str:
    import re

    text = re.sub(r'\s*for "[^"]*"', "", str(error)).replace("sitk::ERROR:", "")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Description:") or "Could not create IO object" in line:
            return line.replace("Description:", "").strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


def write_image(image: sitk.Image, path: "str | os.PathLike", provenance: Optional[dict] = None,
                compress: Optional[bool] = None) -> Path:
    """Write atomically; with ``provenance``, also a JSON sidecar ``<path>.provenance.json``."""
    path = Path(path)
    suffix = output_suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(path, f"unsupported output extension '{suffix}' (use one of {', '.join(IMAGE_SUFFIXES)})")
    if compress is None:
        compress = suffix in (".nii.gz", ".nrrd", ".seg.nrrd", ".mha")
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=bool(compress))
        if provenance is not None:
            with atomic_output(sidecar_path(path)) as tmp_sidecar:
                tmp_sidecar.write_text(json.dumps(provenance, indent=2, sort_keys=True))
    return path


def check_finite(image: sitk.Image, subject: "str | os.PathLike | None") -> None:
    """Refuse NaN or infinite voxels."""
    array = geometry.array_view(image)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        count = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InputError(subject, f"image has {count} NaN or infinite voxels")


def check_3d(image: sitk.Image, subject: "str | os.PathLike | None", what: str = "this step") -> None:
    if image.GetDimension() != 3:
        raise InputError(subject, f"{image.GetDimension()}-D image, {what} needs a 3-D image")


def image_info(image: sitk.Image, reader: Optional[sitk.ImageFileReader] = None) -> dict:
    """Geometry, pixel type, value range and metadata of an image (no patient identifiers)."""
    info = geometry.describe(image)
    array = geometry.array_view(image)
    if array.size:
        finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
        info["range"] = [float(finite.min()), float(finite.max())] if finite.size else [None, None]
        info["nan_or_inf_voxels"] = int(array.size - finite.size)
    keys = reader.GetMetaDataKeys() if reader is not None else image.GetMetaDataKeys()
    meta = {}
    for key in keys:
        value = reader.GetMetaData(key) if reader is not None else image.GetMetaData(key)
        if _is_identifying(key):
            continue
        meta[key] = value if len(value) < 200 else value[:200] + "..."
    info["metadata"] = meta
    return info


_IDENTIFYING = ("patient", "0010|", "name", "birth", "accession", "institution", "physician", "operator")


def _is_identifying(key: str) -> bool:
    key = key.lower()
    return any(marker in key for marker in _IDENTIFYING)


def provenance_sidecar(path: "str | os.PathLike") -> Optional[dict]:
    sidecar = sidecar_path(path)
    return json.loads(sidecar.read_text()) if sidecar.exists() else None


__all__ = [
    "check_input_file", "read_image", "read_image_header", "write_image", "check_finite", "check_3d",
    "image_info", "provenance_json", "provenance_sidecar",
]
