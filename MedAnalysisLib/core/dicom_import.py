"""Import: from a folder, ZIP archive, DICOMDIR or image file to SimpleITK images + metadata.

One entry point for DICOM series and for NIfTI / NRRD / MHA files. :class:`ImportSession`
opens the source (a ZIP archive is extracted into a temporary folder removed on exit),
scans it header-only, selects the volumes to load and loads them one at a time, so that a
caller (the MRML logic, the CLI) decides where each goes. :func:`scan_source` and
:func:`import_to_files` are the two headless operations behind ``medanalysis scan`` and
``medanalysis import``.

Privacy: reports, names, attributes and outputs never carry the patient's name or ID.
With ``anonymize`` they carry nothing from the profile's list either: names are built from
modality and series number, UIDs are replaced consistently, dates are shifted, free text
is dropped (see :mod:`.dicom_deid`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk

from . import dicom
from .dicom_archive import ArchiveLimits, SourceFiles, open_source
from .dicom_deid import Deidentifier
from .errors import InputError
from .import_parameters import ImportParameters  # noqa: F401 (re-exported)
from .progress import CancelToken, ProgressCallback, ProgressReporter, atomic_outputs, output_suffix

IMAGE_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
OUTPUT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

# Attributes copied onto the volume (name in the header -> node attribute "DICOM.<name>").
# Never the patient's name or ID; descriptions only when not anonymized (the profile drops them).
METADATA_KEYWORDS = (
    "Modality", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "SeriesNumber",
    "SeriesDescription", "StudyDescription", "ProtocolName", "BodyPartExamined",
    "StudyDate", "SeriesDate", "AcquisitionDate", "AcquisitionTime", "ContentDate",
    "Manufacturer", "ManufacturerModelName", "MagneticFieldStrength", "ConvolutionKernel", "KVP",
    "SliceThickness", "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "ScanningSequence",
    "SequenceName", "ImageType", "PhotometricInterpretation", "RescaleType", "Units", "ContrastBolusAgent",
)
_NEVER = {"PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientAddress", "AccessionNumber"}


@dataclasses.dataclass
class PlannedImage:
    """One loadable item: a planned DICOM volume, or an image file (with a time point for 4-D)."""

    kind: str  # 'dicom' or 'image'
    volume: Optional[dicom.DicomVolume] = None
    path: Optional[Path] = None
    name_hint: str = ""
    index_in_series: int = 0
    volumes_in_series: int = 1

    @property
    def series_number(self) -> Optional[int]:
        return self.volume.series.series_number if self.volume is not None else None

    @property
    def modality(self) -> str:
        return self.volume.series.modality if self.volume is not None else "IMG"


@dataclasses.dataclass
class ImportedImage:
    """A loaded image and everything to put on its volume node (or beside its file)."""

    image: sitk.Image
    name: str
    attributes: dict
    summary: dict
    warnings: list
    invert_display: bool = False
    window: Optional[tuple] = None


def _image_suffix(path: Path) -> Optional[str]:
    suffix = output_suffix(path)
    return suffix if suffix in IMAGE_FILE_SUFFIXES else None


class ImportSession:
    """Open, scan and load a source; use as ``with ImportSession(...) as session``.

    The source stays available (ZIP extracted) until the ``with`` block ends.
    """

    def __init__(self, source: "str | os.PathLike", parameters: Optional[ImportParameters] = None,
                 deidentifier: Optional[Deidentifier] = None, progress: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelToken] = None, limits: ArchiveLimits = ArchiveLimits()):
        self.source = Path(source)
        self.parameters = parameters or ImportParameters()
        self.deidentifier = deidentifier if deidentifier is not None else Deidentifier()
        self.report = ProgressReporter(progress, cancel)
        self.limits = limits
        self.files: Optional[SourceFiles] = None
        self.scan: Optional[dicom.ScanResult] = None
        self.image_files: list = []
        self._context = None
        self._numbers: Optional[dict] = None

    # -- opening and scanning ----------------------------------------------------------------------
    def __enter__(self) -> "ImportSession":
        self._context = open_source(self.source, self.limits, self.report.sub(0.0, 0.1), self.report.cancel)
        self.files = self._context.__enter__()
        try:
            self._scan()
        except BaseException:
            self._context.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)
            self._context = None

    def relative(self, path) -> str:
        """How messages name a file: its path relative to the source, or with ``anonymize`` its
        number in the sorted file list ("file #12"), since file names may carry identifiers."""
        if self.parameters.anonymize and self.files.kind != "file":  # one file: the name the user typed
            if self._numbers is None:
                self._numbers = {os.fspath(p): n for n, p in enumerate(self.files.files, start=1)}
            number = self._numbers.get(os.fspath(path))
            return f"file #{number}" if number else "file"
        return self.files.relative(path)

    def source_warnings(self) -> list:
        """Files skipped for a reason, that belong to no series we could identify."""
        attributed = {w.split(": ", 1)[0][len("left out "):] for s in self.scan.series for w in s.warnings
                      if w.startswith("left out ")}
        return [f"skipped {name}: {reason}" for name, reason in self.scan.skipped if name not in attributed]

    def _scan(self) -> None:
        candidates = []
        for path in self.files.files:
            if _image_suffix(path):
                self.image_files.append(path)
            else:
                candidates.append(path)
        scan_report = self.report.sub(0.1, 0.3 if candidates else 0.1)
        self.scan = dicom.scan_files(candidates, self.relative, scan_report)
        if not self.scan.series and not self.image_files:
            self._raise_nothing_found()

    def _raise_nothing_found(self) -> None:
        scan = self.scan
        what = "folder" if self.files.kind == "folder" else ("archive" if self.files.kind == "zip" else "file")
        if self.files.kind == "file" and scan.skipped:
            raise InputError(self.source, scan.skipped[0][1])
        if scan.skipped and not scan.non_image_objects:
            first = scan.skipped[0]
            raise InputError(self.source, f"no readable DICOM image: {len(scan.skipped)} DICOM file(s) unusable "
                                          f"(first: {first[0]}: {first[1]})")
        if scan.non_image_objects:
            raise InputError(self.source, f"no DICOM image series: {scan.non_image_objects} DICOM object(s) without "
                                          "pixel data (pixel data missing, or reports/presentation states)")
        count = len(self.files.files)
        raise InputError(self.source, f"no DICOM or image files found in this {what} ({count} file(s) checked)")

    # -- selection -------------------------------------------------------------------------------
    def planned(self) -> list:
        """Every loadable item of the source, in scan order."""
        items = []
        for series in self.scan.series:
            for index, volume in enumerate(series.volumes):
                items.append(PlannedImage("dicom", volume, index_in_series=index,
                                          volumes_in_series=len(series.volumes)))
        for path in self.image_files:
            items.append(PlannedImage("image", path=path, name_hint=self.files.relative(path)))
        return items

    def selected(self) -> list:
        """Items matching ``parameters.series_uid`` (all when empty; several ids may be given,
        separated by spaces or commas)."""
        wanted = split_ids(self.parameters.series_uid)
        items = self.planned()
        if not wanted:
            return items
        chosen = [item for item in items
                  if (item.kind == "dicom" and ({item.volume.series.series_uid, item.volume.volume_id} & set(wanted)))
                  or (item.kind == "image" and item.name_hint in wanted)]
        found = {key for item in chosen for key in ((item.volume.series.series_uid, item.volume.volume_id)
                                                     if item.kind == "dicom" else (item.name_hint,))}
        missing = [w for w in wanted if w not in found]
        if missing:
            raise InputError(self.source, f"no series or volume '{missing[0]}' here (run 'medanalysis scan' to "
                                          "list them)")
        return chosen

    # -- reports ---------------------------------------------------------------------------------
    def scan_report(self) -> dict:
        """JSON-able description of the source (studies, series, volumes, QA); no patient identifiers."""
        scan = self.scan
        series_entries = []
        for series in scan.series:
            header = series.header
            series_entries.append({
                "study_uid": series.study_uid,
                "series_uid": series.series_uid,
                "series_number": series.series_number,
                "modality": series.modality,
                "description": dicom._text(header, "SeriesDescription"),
                "date": dicom._text(header, "SeriesDate") or dicom._text(header, "StudyDate"),
                "files": len(series.files),
                "size_bytes": int(sum(f.size_bytes for f in series.files)),
                "volumes": [dicom.summarize_volume(v) for v in series.volumes],
                "warnings": list(series.warnings),
                "qa": series.qa,
            })
        images = []
        for path in self.image_files:
            entry = {"file": self.relative(path)}
            try:
                from .imageio import read_image_header

                reader = read_image_header(path)
                entry.update({"size": list(reader.GetSize()), "spacing_mm": list(reader.GetSpacing()),
                              "dimension": reader.GetDimension()})
            except InputError as error:
                entry["error"] = error.problem
            images.append(entry)
        return {
            "source": os.fspath(self.source),
            "kind": self.files.kind,
            "files": len(self.files.files),
            "dicom_files": scan.dicom_files,
            "non_dicom_files": scan.non_dicom_files,
            "non_image_dicom_objects": scan.non_image_objects,
            "skipped": [{"file": name, "reason": reason} for name, reason in scan.skipped],
            "studies": len({s.study_uid for s in scan.series}),
            "series": series_entries,
            "image_files": images,
        }

    # -- loading ---------------------------------------------------------------------------------
    def load(self, item: PlannedImage, report: Optional[ProgressReporter] = None) -> list:
        """Load one planned item: a list of :class:`ImportedImage` (several for a 4-D image file)."""
        report = report or self.report
        if item.kind == "image":
            return self._load_image_file(item, report)
        loaded = dicom.load_volume(item.volume, report, self.parameters.regularize_geometry, self.relative)
        return [self._imported(item, loaded)]

    def _load_image_file(self, item: PlannedImage, report: ProgressReporter) -> list:
        from .imageio import read_image

        report(0.0, "reading image file")
        try:
            image = read_image(item.path)
        except InputError as error:  # name the file as the user knows it, never an extraction folder
            where = self.relative(item.path)
            if self.files.kind in ("zip", "folder", "dicomdir"):
                where = f"{self.files.source.name}: {where}"
            raise InputError(where, error.problem) from None
        images = [image]
        if image.GetDimension() == 4:
            size = list(image.GetSize())
            images = [sitk.Extract(image, size[:3] + [0], [0, 0, 0, t]) for t in range(size[3])]
        results = []
        stem = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd)$", "", item.path.name, flags=re.I)
        for number, volume in enumerate(images, start=1):
            suffix = f"_t{number}" if len(images) > 1 else ""
            name = (f"Image{suffix}" if self.parameters.anonymize else f"{stem}{suffix}")
            attributes = {"MedAnalysis.Anonymized": "1" if self.parameters.anonymize else "0"}
            if not self.parameters.anonymize:
                attributes["MedAnalysis.SourceFile"] = item.name_hint
            warnings = [f"4-D image: loaded as {len(images)} separate volumes"] if len(images) > 1 else []
            summary = {"name": name, "source_file": None if self.parameters.anonymize else item.name_hint,
                       "time_point": number if len(images) > 1 else None, **_geometry_summary(volume),
                       "warnings": warnings, "qa": {}}
            attributes["MedAnalysis.ImportQA"] = json.dumps({})
            attributes["MedAnalysis.ImportWarnings"] = json.dumps(warnings)
            results.append(ImportedImage(volume, name, attributes, summary, warnings))
        report(1.0, "image file read")
        return results

    def _imported(self, item: PlannedImage, loaded: dicom.LoadedVolume) -> ImportedImage:
        volume = loaded.volume
        series = volume.series
        anonymize = self.parameters.anonymize
        header = volume.header
        warnings = [*self.source_warnings(), *series.warnings, *loaded.warnings]
        if anonymize and header is not None:
            from .dicom_deid import deidentified_copy

            try:
                header = dicom.full_header(header)
                clean = deidentified_copy(header, self.deidentifier)
            except DEIDENTIFY_ERRORS as error:  # a header pydicom cannot carry over: refused, never kept as is
                raise InputError(self.relative(volume.files[0].path),
                                 f"cannot be de-identified ({_one_line_reason(error)})") from None
            warnings.extend(w for w in self.deidentifier.warnings if w not in warnings)
            series_uid = self.deidentifier.map_uid(series.series_uid)
            volume_id = series_uid + (volume.volume_id[len(series.series_uid):] if
                                      volume.volume_id.startswith(series.series_uid) else "")
            instance_uids = [self.deidentifier.map_uid(f.sop_instance_uid) for f in volume.files]
            patient_key = self.deidentifier.patient_key(header)
        else:
            clean = header
            series_uid, volume_id = series.series_uid, volume.volume_id
            instance_uids = [f.sop_instance_uid for f in volume.files]
            patient_key = None
        attributes = {}
        for keyword in METADATA_KEYWORDS:
            if keyword in _NEVER or clean is None:
                continue
            if anonymize and keyword in ("SeriesDescription", "StudyDescription", "ProtocolName"):
                continue
            value = dicom._text(clean, keyword)
            if value:
                attributes[f"DICOM.{keyword}"] = value
        attributes["DICOM.instanceUIDs"] = " ".join(instance_uids)
        attributes["MedAnalysis.VolumeId"] = volume_id
        attributes["MedAnalysis.Anonymized"] = "1" if anonymize else "0"
        if patient_key:
            attributes["MedAnalysis.PatientKey"] = patient_key
        if loaded.invert_display:
            attributes["MedAnalysis.InvertDisplay"] = "1"
        attributes["MedAnalysis.ImportQA"] = json.dumps(loaded.qa, default=_plain)
        attributes["MedAnalysis.ImportWarnings"] = json.dumps(warnings)
        name = self._node_name(item, clean)
        summary = {
            "name": name,
            "volume_id": volume_id,
            "series_uid": series_uid,
            "series_number": series.series_number,
            "modality": series.modality,
            "label": volume.label,
            **_geometry_summary(loaded.image),
            "warnings": warnings,
            "qa": json.loads(attributes["MedAnalysis.ImportQA"]),
        }
        if patient_key:
            summary["patient_key"] = patient_key
        return ImportedImage(loaded.image, name, attributes, summary, warnings, loaded.invert_display, loaded.window)

    def _node_name(self, item: PlannedImage, header) -> str:
        series = item.volume.series
        number = series.series_number
        suffix = f"_{item.index_in_series + 1}" if item.volumes_in_series > 1 else ""
        if self.parameters.anonymize:
            return f"{series.modality}_{number if number is not None else 'x'}{suffix}"
        description = dicom._text(header, "SeriesDescription") if header is not None else ""
        base = f"{number}: {description or series.modality}" if number is not None else (description or series.modality)
        label = item.volume.label
        return f"{base} ({label})" if label else base

    # -- de-identified export ----------------------------------------------------------------------
    def export_deidentified(self, item: PlannedImage, folder: "str | os.PathLike",
                            report: Optional[ProgressReporter] = None) -> Path:
        """Write the item's DICOM files de-identified into ``folder/<modality>_<series number>_<n>/``.

        All-or-nothing: files go to a hidden temporary folder renamed at the end; an existing
        target folder is never replaced.
        """
        import pydicom

        report = report or ProgressReporter()
        volume = item.volume
        folder = Path(folder)
        name = export_folder_name(item)
        target = folder / name
        if target.exists():
            raise InputError(target, "already exists: de-identified DICOM export never replaces a folder")
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".{name}.part"
        staging.mkdir(exist_ok=False)
        try:
            files = volume.files
            for number, record in enumerate(files):
                report(number / max(len(files), 1), f"de-identifying {number + 1}/{len(files)}")
                try:
                    dataset = pydicom.dcmread(record.path)
                    self.deidentifier.deidentify(dataset)
                    pydicom.dcmwrite(staging / f"IM{number + 1:05d}.dcm", dataset, enforce_file_format=True)
                except DEIDENTIFY_ERRORS as error:  # a header pydicom cannot carry over
                    raise InputError(self.relative(record.path),
                                     f"cannot be de-identified and written ({_one_line_reason(error)})") from None
            os.replace(staging, target)
        finally:
            if staging.exists():
                for child in staging.iterdir():
                    child.unlink()
                staging.rmdir()
        return target


DEIDENTIFY_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, UnicodeError,
                     EOFError, NotImplementedError, struct.error)  # what pydicom raises on headers it cannot carry


def _one_line_reason(error: BaseException) -> str:
    """The exception as one short line (pydicom sometimes embeds a whole traceback in its message)."""
    text = str(error).split("Traceback")[0]
    return " ".join(f"{type(error).__name__}: {text}".split())[:200]


def split_ids(text: str) -> list:
    """Series/volume ids from a parameter string (separated by spaces or commas)."""
    return [part for part in re.split(r"[\s,]+", text or "") if part]


def provenance_parameters(parameters: ImportParameters, deidentifier: Deidentifier) -> dict:
    """The parameters as recorded in provenance: original UIDs replaced when anonymized."""
    record = dataclasses.asdict(parameters)
    record["deid_key"] = "key file" if parameters.deid_key else ""  # never the path or the key
    if parameters.anonymize and parameters.series_uid:
        mapped = []
        for identifier in split_ids(parameters.series_uid):
            uid, _, number = identifier.partition("#")
            mapped.append(deidentifier.map_uid(uid) + (f"#{number}" if number else ""))
        record["series_uid"] = " ".join(mapped)
    return record


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _geometry_summary(image: sitk.Image) -> dict:
    return {
        "size": [int(v) for v in image.GetSize()],
        "spacing_mm": [float(v) for v in image.GetSpacing()],
        "origin_lps_mm": [float(v) for v in image.GetOrigin()],
        "direction_lps": [float(v) for v in image.GetDirection()],
        "pixel_type": image.GetPixelIDTypeAsString(),
        "components": image.GetNumberOfComponentsPerPixel(),
    }


def scan_source(source: "str | os.PathLike", progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None, limits: ArchiveLimits = ArchiveLimits()) -> dict:
    """Studies, series and volumes in a folder / ZIP / DICOMDIR / file, read header-only."""
    started = time.perf_counter()
    with ImportSession(source, progress=progress, cancel=cancel, limits=limits) as session:
        report = session.scan_report()
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def output_paths(output: "str | os.PathLike", items: list, anonymize: bool = False) -> list:
    """Where each item goes: ``output`` itself for one item, else ``<stem>_<series number>[_n]<suffix>``."""
    output = Path(output)
    suffix = output_suffix(output)
    if len(items) == 1:
        return [output]
    stem = output.name[: len(output.name) - len(suffix)]
    paths, used = [], set()
    for number, item in enumerate(items, start=1):
        if item.kind == "dicom":
            tag = str(item.series_number) if item.series_number is not None else f"s{number}"
            if item.volumes_in_series > 1:
                tag += f"_{item.index_in_series + 1}"
        elif anonymize:
            tag = f"i{number}"
        else:
            tag = safe_name(item.name_hint.split(".")[0], f"i{number}")
        candidate = f"{stem}_{tag}"
        while candidate in used:
            candidate += "_b"
        used.add(candidate)
        paths.append(output.with_name(candidate + suffix))
    return paths


def import_to_files(source: "str | os.PathLike", output: "str | os.PathLike",
                    parameters: Optional[ImportParameters] = None, progress: Optional[ProgressCallback] = None,
                    cancel: Optional[CancelToken] = None, deidentifier: Optional[Deidentifier] = None,
                    limits: ArchiveLimits = ArchiveLimits()) -> dict:
    """Import every selected volume of ``source`` into image files beside ``output`` (all or nothing).

    Each file gets a ``.provenance.json`` sidecar. Returns the ``--json`` report.
    """
    from .provenance import make_provenance, sidecar_path

    parameters = parameters or ImportParameters()
    output = Path(output)
    if output_suffix(output) not in OUTPUT_SUFFIXES:
        raise InputError(output, f"unsupported output extension '{output_suffix(output)}' "
                                 f"(use one of {', '.join(OUTPUT_SUFFIXES)})")
    deidentifier = parameters.deidentifier(deidentifier)  # also validates the parameters
    started = time.perf_counter()
    timings = {}
    report = ProgressReporter(progress, cancel)
    with ImportSession(source, parameters, deidentifier, report.sub(0.0, 0.3), report.cancel, limits) as session:
        timings["scan_s"] = round(time.perf_counter() - started, 3)
        items = session.selected()
        paths = output_paths(output, items, parameters.anonymize)
        if parameters.export_dicom_dir:
            for item in items:
                if item.kind == "dicom":
                    _check_export_target(session, item, parameters.export_dicom_dir)
        outputs, exported = [], []
        skipped = [{"file": name, "reason": reason} for name, reason in session.scan.skipped]
        all_paths = [p for path in paths for p in (path, sidecar_path(path))]
        with atomic_outputs(all_paths) as temporary:
            for number, (item, path) in enumerate(zip(items, paths)):
                step = report.sub(0.3 + 0.65 * number / len(items), 0.3 + 0.65 * (number + 1) / len(items))
                load_started = time.perf_counter()
                images = session.load(item, step.sub(0.0, 0.8))
                if len(images) > 1:  # 4-D image file: a 4-D output (same layout as the input)
                    joined = sitk.JoinSeries([i.image for i in images])
                    imported = images[0]
                    imported = dataclasses.replace(imported, image=joined, summary={**imported.summary,
                                                                                    **_geometry_summary(joined)})
                else:
                    imported = images[0]
                load_seconds = time.perf_counter() - load_started
                step(0.85, f"writing {path.name}")
                write_started = time.perf_counter()
                index = all_paths.index(path)
                sitk.WriteImage(imported.image, str(temporary[index]),
                                useCompression=output_suffix(path) in (".nii.gz", ".nrrd", ".mha"))
                record = make_provenance("import", provenance_parameters(parameters, session.deidentifier),
                                         input_checksums(item, parameters.anonymize),
                                         extra={"source": None if parameters.anonymize else os.fspath(source),
                                                "volume": imported.summary.get("volume_id", imported.name),
                                                "qa": imported.summary.get("qa", {}),
                                                "warnings": imported.warnings})
                temporary[index + 1].write_text(json.dumps(record, indent=2, sort_keys=True, default=_plain))
                if parameters.export_dicom_dir and item.kind == "dicom":
                    exported.append(os.fspath(session.export_deidentified(item, parameters.export_dicom_dir,
                                                                          step.sub(0.9, 1.0))))
                outputs.append({"file": os.fspath(path), **imported.summary,
                                "load_s": round(load_seconds, 3),
                                "write_s": round(time.perf_counter() - write_started, 3)})
    result = {"outputs": outputs, "anonymized": parameters.anonymize, "skipped": skipped, "timings": {
        **timings, "total_s": round(time.perf_counter() - started, 3)}}
    if exported:
        result["exported_dicom"] = exported
    report(1.0, f"imported {len(outputs)} volume(s)")
    return result


def safe_name(text: str, fallback: str = "x", limit: int = 64) -> str:
    """A file or folder name built from a header value: letters, digits, '-' and '_' only, never
    empty, never '.' or '..', at most ``limit`` characters (header values never steer a path)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", str(text or "")).strip("_")[:limit]
    return cleaned or fallback


def export_folder_name(item: PlannedImage) -> str:
    """``<modality>_<series number>[_<n>]`` with the modality reduced to a safe name."""
    series = item.volume.series
    name = f"{safe_name(series.modality, 'OT')}_{series.series_number if series.series_number is not None else 'x'}"
    if item.volumes_in_series > 1:
        name += f"_{item.index_in_series + 1}"
    return name


def _check_export_target(session: ImportSession, item: PlannedImage, folder: str) -> None:
    name = export_folder_name(item)
    if (Path(folder) / name).exists():
        raise InputError(Path(folder) / name, "already exists: de-identified DICOM export never replaces a folder")


def input_checksums(item: PlannedImage, anonymize: bool) -> dict:
    """SHA-256 of the series' sorted SOP Instance UIDs (the DICOM identity of the inputs), or of
    the image file. Left out when anonymized: a hash of original UIDs would link back."""
    if anonymize:
        return {}
    if item.kind == "image":
        from .provenance import file_sha256

        return {item.name_hint: file_sha256(item.path)}
    uids = sorted(f.sop_instance_uid for f in item.volume.files)
    digest = hashlib.sha256("\n".join(uids).encode()).hexdigest()
    return {f"dicom_series_sop_instance_uids:{item.volume.volume_id}": digest}
