"""DICOM Segmentation objects (BINARY SEG, written with highdicom) from a label image and the
DICOM series it was made from.

The label image may lie on any grid (a resampled or reoriented copy of the series): each frame
of the SEG is sampled (nearest neighbour) on the exact plane of its source frame, so the SEG's
frames sit at the source slice positions and reference the source instances one to one, in
whatever order the files came. Segment names, colours (CIELab) and SNOMED CT codes come from
the segment table (:mod:`.labels`); the algorithm identification carries the model's name,
SHA-256 and the MedAnalysis version.

With a :class:`~.dicom_deid.Deidentifier` the source headers are de-identified first, so the
SEG carries the same pseudonyms and UIDs as the de-identified import made with the same key.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from . import geometry
from .errors import InputError
from .labels import SegmentSpec

DEFAULT_CODE = ("SCT", "85756007", "Tissue")
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
MAX_SEGMENTS = 200  # more distinct values than this: an intensity image given by mistake


@dataclasses.dataclass
class ReferenceSeries:
    """The source series of a SEG: its headers (no pixel data), in the order found."""

    datasets: list
    series_uid: str
    subject: str  # how the user named the reference (for messages)

    @property
    def modality(self) -> str:
        return str(self.datasets[0].get("Modality", "OT"))


@dataclasses.dataclass
class Algorithm:
    """What made the segmentation (None of it for a manual or unknown segmentation)."""

    name: str
    version: str
    parameters: dict


def read_reference_series(source: "str | os.PathLike", series_uid: str = "") -> ReferenceSeries:
    """Headers of one DICOM series from a folder, ZIP or DICOMDIR (``series_uid`` chooses one
    when there are several)."""
    import pydicom

    from .dicom_import import ImportSession

    source = Path(source)
    with ImportSession(source) as session:
        items = [item for item in session.planned() if item.kind == "dicom"]
        if not items:
            raise InputError(source, "holds no DICOM image series to reference")
        series = {}
        for item in items:
            series.setdefault(item.volume.series.series_uid, []).extend(item.volume.files)
        if series_uid:
            if series_uid not in series:
                raise InputError(source, f"no series {series_uid} (it holds {len(series)}; "
                                         "'medanalysis scan' lists them)")
        elif len(series) > 1:
            raise InputError(source, f"holds {len(series)} DICOM series: choose one with --series UID "
                                     "('medanalysis scan' lists them)")
        else:
            series_uid = next(iter(series))
        datasets, seen = [], set()
        for record in series[series_uid]:
            if record.path in seen:
                continue
            seen.add(record.path)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    datasets.append(pydicom.dcmread(record.path, stop_before_pixels=True))
            except Exception as error:  # noqa: BLE001 - pydicom raises many types on malformed input
                raise InputError(session.relative(record.path),
                                 f"unreadable DICOM header ({type(error).__name__})") from None
    return ReferenceSeries(datasets, series_uid, os.fspath(source))


def _frame_planes(dataset) -> list:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing, thickness) of each frame."""
    def measures(group):
        sequence = group.get("PixelMeasuresSequence") if group is not None else None
        return sequence[0] if sequence else None

    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    shared = (dataset.get("SharedFunctionalGroupsSequence") or [None])[0]
    if per_frame is None:
        position = dataset.get("ImagePositionPatient")
        orientation = dataset.get("ImageOrientationPatient")
        spacing = dataset.get("PixelSpacing")
        if position is None or orientation is None or spacing is None or frames != 1:
            raise ValueError("no image plane (ImagePositionPatient, ImageOrientationPatient, PixelSpacing)")
        return [(position, orientation, spacing, float(dataset.get("SliceThickness") or 1.0))]
    planes = []
    for group in per_frame:
        position = group.get("PlanePositionSequence")
        orientation = group.get("PlaneOrientationSequence") or (shared.get("PlaneOrientationSequence")
                                                                  if shared is not None else None)
        pixel = measures(group) or measures(shared)
        if not position or not orientation or pixel is None:
            raise ValueError("a frame has no plane position, orientation or pixel measures")
        planes.append((position[0].ImagePositionPatient, orientation[0].ImageOrientationPatient,
                       pixel.PixelSpacing, float(pixel.get("SliceThickness") or 1.0)))
    return planes


def label_values(array: np.ndarray, subject: str) -> list:
    """The non-zero label values present (integer labels 0..65535)."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(subject, "label map holds non-integer values")
    if not array.size:
        return []
    if array.dtype.kind == "u" and array.dtype.itemsize <= 2:  # the usual case: no sort, small chunks
        flat = np.ravel(array)
        counts = np.zeros(1 << (8 * array.dtype.itemsize), np.int64)
        for start in range(0, flat.size, 1 << 22):
            chunk = np.bincount(flat[start:start + (1 << 22)])
            counts[:chunk.size] += chunk
    else:
        low, high = array.min(), array.max()
        if low < 0 or high > 65535:
            raise InputError(subject, f"label values {low:g}..{high:g} do not fit a DICOM SEG (0..65535)")
        counts = np.bincount(np.ravel(array).astype(np.uint16))
    return [int(v) for v in np.flatnonzero(counts) if v > 0]


def frames_on_source(labels: sitk.Image, reference: ReferenceSeries) -> np.ndarray:
    """Label values sampled on every source frame: (frames, rows, columns), frames in the order of
    ``reference.datasets`` (and of the frames within each)."""
    labels = sitk.Cast(labels, sitk.sitkUInt16) if labels.GetPixelID() != sitk.sitkUInt16 else labels
    frames = []
    for number, dataset in enumerate(reference.datasets):
        try:
            planes = _frame_planes(dataset)
            rows, columns = int(dataset.Rows), int(dataset.Columns)
            grids = [geometry.dicom_plane_grid([float(v) for v in position], [float(v) for v in orientation],
                                               [float(v) for v in spacing], rows, columns, thickness)
                     for position, orientation, spacing, thickness in planes]
        except (ValueError, TypeError, AttributeError, IndexError) as error:
            raise InputError(reference.subject, f"source instance {number + 1} has no usable image plane ({error})") \
                from None
        for grid in grids:
            plane = geometry.resample_to_grid(labels, grid, sitk.sitkNearestNeighbor, 0)
            frames.append(np.array(geometry.array_view(plane)[0]))  # a copy: the view dies with plane
    return np.stack(frames)


def coded(code: Optional[tuple], default: tuple = DEFAULT_CODE):
    """highdicom CodedConcept of a (scheme, value, meaning) tuple (``default`` when None)."""
    import highdicom as hd

    scheme, value, meaning = code or default
    return hd.sr.CodedConcept(value=str(value), scheme_designator=str(scheme), meaning=str(meaning)[:64])


def segment_descriptions(specs: Sequence[SegmentSpec], algorithm: Optional[Algorithm],
                         tracking: Optional[dict] = None) -> list:
    """highdicom SegmentDescriptions numbered 1..N in the order of ``specs``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    identification = None
    if algorithm is not None:
        identification = hd.AlgorithmIdentificationSequence(
            name=algorithm.name[:64], family=codes.cid7162.ArtificialIntelligence,
            version=algorithm.version[:64], parameters={k: str(v)[:64] for k, v in algorithm.parameters.items()})
    descriptions = []
    for number, spec in enumerate(specs, start=1):
        rgb = [int(round(255 * min(max(float(c), 0.0), 1.0))) for c in spec.color]
        uid, identifier = (tracking or {}).get(spec.label, (None, None))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=spec.name[:64],
            segmented_property_category=coded(spec.category), segmented_property_type=coded(spec.type),
            algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if identification is not None
                            else hd.seg.SegmentAlgorithmTypeValues.MANUAL),
            algorithm_identification=identification, display_color=hd.color.CIELabColor.from_rgb(*rgb),
            tracking_uid=uid, tracking_id=identifier))
    return descriptions


def build_segmentation(labels: sitk.Image, specs: Sequence[SegmentSpec], reference: ReferenceSeries,
                       subject: str, algorithm: Optional[Algorithm] = None, deidentifier=None,
                       series_description: str = "MedAnalysis segmentation"):
    """The SEG data set (BINARY, one segment per label present on the source frames).

    Returns (dataset, specs written in segment-number order, source datasets as referenced).
    """
    import highdicom as hd

    from .. import __version__

    present = label_values(geometry.array_view(labels), subject)
    if not present:
        raise InputError(subject, "segmentation has no labelled voxels: nothing to export")
    if len(present) > MAX_SEGMENTS:
        raise InputError(subject, f"{len(present)} distinct label values: this looks like an intensity image, not a "
                                  f"label map (a DICOM SEG is written for at most {MAX_SEGMENTS} segments)")
    frames = frames_on_source(labels, reference)
    on_source = label_values(frames, subject)
    if not on_source:
        raise InputError(subject, "segmentation does not overlap the reference series' slices in scanner "
                                  "coordinates (it belongs to another image, or its geometry is wrong)")
    by_label = {spec.label: spec for spec in specs}
    chosen = [by_label.get(value) or SegmentSpec(value, f"Segment_{value}") for value in on_source]
    numbers = np.zeros(max(on_source) + 1, dtype=np.uint8 if len(chosen) < 256 else np.uint16)
    for number, spec in enumerate(chosen, start=1):
        numbers[spec.label] = number
    segment_frames = numbers[frames]
    datasets = source_headers(reference, deidentifier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=segment_frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(chosen, algorithm),
            series_instance_uid=hd.UID(), series_number=_series_number(datasets[0]), sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="MedAnalysis",
            manufacturer_model_name=(algorithm.name if algorithm is not None else "MedAnalysis")[:64],
            software_versions=str(__version__), device_serial_number="none", content_label="SEGMENTATION",
            content_description="Research use only, not for clinical use", omit_empty_frames=True,
            series_description=series_description[:64])
    return seg, chosen, datasets


# Type 2 attributes of the patient and study modules a derived object copies (empty when unknown)
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def source_headers(reference: ReferenceSeries, deidentifier=None) -> list:
    """The source headers as the derived objects reference them (changed in place: they were read
    for this export): de-identified with ``deidentifier`` (same pseudonyms and UIDs as a
    de-identified import with the same key), and with the patient/study attributes a derived
    object must carry present (empty when unknown)."""
    datasets = reference.datasets
    if any("SliceThickness" not in d for d in datasets) and all("ImagePositionPatient" in d for d in datasets):
        thickness = geometry.slice_spacing_mm([[float(v) for v in d.ImagePositionPatient] for d in datasets],
                                              [float(v) for v in datasets[0].ImageOrientationPatient]) or 1.0
        for dataset in datasets:  # type 2 in the image modules; the SEG's pixel measures need a value
            if "SliceThickness" not in dataset or dataset.SliceThickness in (None, ""):
                dataset.SliceThickness = round(thickness, 6)
    for dataset in datasets:
        if deidentifier is not None:
            deidentifier.deidentify(dataset)
        for element in list(dataset):  # an empty sequence copied into the SEG (e.g. ProcedureCodeSequence
            if element.VR == "SQ" and not element.value:  # of the study module) would make it invalid
                del dataset[element.tag]
        for keyword in _TYPE2_COPIED:
            if keyword not in dataset:
                setattr(dataset, keyword, "")
    return datasets


def _series_number(dataset) -> int:
    try:
        return int(dataset.get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        return 1000


def segment_frames_by_source(seg) -> dict:
    """{(source SOP Instance UID, source frame number): {segment number: (rows, columns) bool}} of a
    SEG read back with highdicom (tests and round-trip checks)."""
    result: dict = {}
    pixels = seg.pixel_array
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        derivation = item.DerivationImageSequence[0].SourceImageSequence[0]
        key = (str(derivation.ReferencedSOPInstanceUID), int(derivation.get("ReferencedFrameNumber", 1) or 1))
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        result.setdefault(key, {})[number] = pixels[index].astype(bool)
    return result


__all__ = ["ReferenceSeries", "Algorithm", "read_reference_series", "frames_on_source", "build_segmentation",
           "segment_descriptions", "segment_frames_by_source", "source_headers", "coded", "SEG_SOP_CLASS"]
