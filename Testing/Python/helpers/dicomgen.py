"""Synthetic DICOM series written with pydicom, for the import tests and bench_import.py.

Geometry is written exactly as DICOM defines it: ImagePositionPatient is the LPS centre of
the first transmitted pixel, ImageOrientationPatient the LPS row then column direction
cosines, PixelSpacing (between rows, between columns). A SimpleITK image maps onto that
directly: i -> row direction (spacing[0]), j -> column direction (spacing[1]).

The generator itself is checked against SimpleITK's GDCM reader in core/test_dicomgen.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def ds_values(values: Sequence[float]) -> list:
    """Decimal strings of at most 16 characters (the DS limit) keeping all the precision they can."""
    return [format_number_as_ds(float(v)) for v in values]


def slice_dataset(pixels: np.ndarray, position: Sequence[float], orientation: Sequence[float],
                  pixel_spacing: Sequence[float], *, modality: str = "MR", study_uid: str, series_uid: str,
                  frame_uid: str, series_number: int = 1, instance_number: int = 1, slope: float = 1.0,
                  intercept: float = 0.0, thickness: Optional[float] = None,
                  syntax=ExplicitVRLittleEndian, sop_uid: Optional[str] = None) -> Dataset:
    """One single-frame image (stored values ``pixels``: int16, uint16 or uint8 (rows, cols))."""
    sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SYN0001"
    ds.StudyDate = "20260101"
    ds.SeriesDate = "20260101"
    ds.AcquisitionDate = "20260101"
    ds.AcquisitionTime = "101010"
    ds.SeriesDescription = "synthetic series"
    ds.Manufacturer = "MedAnalysis test generator"
    ds.ImagePositionPatient = ds_values(position)
    ds.ImageOrientationPatient = ds_values(orientation)
    ds.PixelSpacing = ds_values(pixel_spacing)
    if thickness is not None:
        ds.SliceThickness = format_number_as_ds(float(thickness))
    pixels = np.ascontiguousarray(pixels)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if slope != 1.0 or intercept != 0.0 or modality == "CT":
        ds.RescaleSlope = format_number_as_ds(float(slope))
        ds.RescaleIntercept = format_number_as_ds(float(intercept))
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def write_slices(folder: Path, slices: Sequence[np.ndarray], positions: Sequence[Sequence[float]],
                 orientation: Sequence[float], pixel_spacing: Sequence[float], *,
                 rng: Optional[np.random.Generator] = None, instance_numbers: Optional[Sequence[int]] = None,
                 names: Optional[Sequence[str]] = None, edit: Optional[Callable[[Dataset, int], None]] = None,
                 **attributes) -> list:
    """Write one file per slice; with ``rng`` the file names and InstanceNumbers are shuffled
    so that neither matches the slice order. Returns the paths in slice order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = len(slices)
    attributes.setdefault("study_uid", generate_uid())
    attributes.setdefault("series_uid", generate_uid())
    attributes.setdefault("frame_uid", generate_uid())
    if instance_numbers is None:
        instance_numbers = list(rng.permutation(count) * 7 + 3) if rng is not None else list(range(1, count + 1))
    if names is None:
        order = rng.permutation(count) if rng is not None else np.arange(count)
        names = [f"IM{int(order[k]) * 37 % 100003:06d}{'' if rng is None else '.dcm'}" for k in range(count)]
    paths = []
    for index in range(count):
        ds = slice_dataset(slices[index], positions[index], orientation, pixel_spacing,
                           instance_number=int(instance_numbers[index]), **attributes)
        if edit is not None:
            edit(ds, index)
        path = folder / names[index]
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def image_geometry(image: sitk.Image) -> tuple:
    """(orientation (6), pixel spacing (2), positions (N, 3)) of a 3-D SimpleITK image's slices."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    origin = np.array(image.GetOrigin())
    orientation = [*direction[:, 0], *direction[:, 1]]
    positions = [origin + k * spacing[2] * direction[:, 2] for k in range(image.GetSize()[2])]
    return orientation, (spacing[1], spacing[0]), positions


def write_image_series(image: sitk.Image, folder: Path, *, slope: float = 1.0, intercept: float = 0.0,
                       stored_dtype=np.int16, **kwargs) -> list:
    """Write a 3-D image as a series whose values (stored x slope + intercept) equal the image's."""
    values = sitk.GetArrayFromImage(image).astype(np.float64)
    stored = (values - intercept) / slope
    if not np.allclose(stored, np.round(stored)):
        raise ValueError("image values are not representable with this slope/intercept")
    info = np.iinfo(stored_dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError("stored values overflow the stored type")
    stored = np.round(stored).astype(stored_dtype)
    orientation, pixel_spacing, positions = image_geometry(image)
    return write_slices(folder, list(stored), positions, orientation, pixel_spacing, slope=slope,
                        intercept=intercept, **kwargs)


def rotation_direction(angles_deg: Sequence[float]) -> tuple:
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*[np.deg2rad(a) for a in angles_deg])
    return rotation.GetMatrix()


def oblique_mni(size=(150, 170, 80), spacing=(0.9, 0.9, 1.5), angles_deg=(18.0, -12.0, 0.0)) -> sitk.Image:
    """The MNI sample resampled (linear, rounded, int16) onto an oblique grid through its centre."""
    from MedAnalysisLib.resources import samplePath

    source = sitk.ReadImage(str(samplePath("mni152_t1.nii.gz")))
    centre = np.array(source.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in source.GetSize()]))
    direction = np.array(rotation_direction(angles_deg)).reshape(3, 3)
    half = (np.array(size) - 1) / 2 * np.array(spacing)
    origin = centre - direction @ half
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    resampled = sitk.Resample(sitk.Cast(source, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    array = np.rint(sitk.GetArrayFromImage(resampled)).astype(np.int16)
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(grid)
    return result


def phantom_volume(shape_kji=(500, 512, 512), seed: int = 7) -> np.ndarray:
    """A CT-like int16 volume (values -1024..~2000): a body ellipse with structures and noise."""
    rng = np.random.default_rng(seed)
    k, j, i = shape_kji
    jj, ii = np.mgrid[0:j, 0:i].astype(np.float32)
    body = (((ii - i / 2) / (0.42 * i)) ** 2 + ((jj - j / 2) / (0.35 * j)) ** 2) <= 1
    base = np.where(body, 40, -1000).astype(np.int16)
    volume = np.empty(shape_kji, dtype=np.int16)
    for z in range(k):
        radius = 0.08 * i * (1 + 0.5 * np.sin(z / 37.0))
        bone = ((ii - i / 2) ** 2 + (jj - j / 1.7) ** 2) <= radius ** 2
        slice_ = base.copy()
        slice_[bone] = 900 + (z % 200)
        noise = rng.integers(-20, 21, size=(j, i), dtype=np.int16)
        volume[z] = slice_ + noise
    return volume
