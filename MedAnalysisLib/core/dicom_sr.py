"""A TID 1500 measurement report (Comprehensive 3D SR, written with highdicom) of monitoring
results: one measurement group per tracked lesion, referencing the lesion segment of the DICOM
SEG of the same time point.

Each group holds the lesion's tracking identifier ("Lesion L3") and tracking UID, the same in
the baseline and the follow-up SR made from one monitoring report (the UID derives from the
report's identity and the lesion id), the lesion volume at this time point, the change status
(new / grown / shrunk / stable / vanished) as a qualitative evaluation, and, at the baseline
time point, the centroid as a 3-D point (the report's coordinates are baseline scanner space).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Optional

import numpy as np

from . import geometry
from .dicom_seg import coded
from .errors import InputError
from .export_parameters import TIME_POINTS

# status -> SNOMED CT qualifier values
STATUS_CODES = {
    "new": ("SCT", "7147002", "New"),
    "grown": ("SCT", "35105006", "Increased"),
    "shrunk": ("SCT", "1250004", "Decreased"),
    "stable": ("SCT", "58158008", "Stable"),
    "vanished": ("SCT", "2667000", "Absent"),
}
CHANGED_STATUS = ("SCT", "263703002", "Changed status")


def _uid_from(*parts: str) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def report_identity(summary: dict) -> str:
    """What makes a monitoring report this one: its provenance (input checksums, time written)."""
    provenance = summary.get("provenance") or {}
    return json.dumps({"inputs": provenance.get("inputs_sha256"), "created": provenance.get("created_utc"),
                       "summary": summary.get("summary")}, sort_keys=True, default=str)


def tracking_uid(summary: dict, lesion_id: str) -> str:
    """The lesion's tracking UID: the same in every SR made from this report."""
    return _uid_from("medanalysis-lesion", report_identity(summary), str(lesion_id))


def load_monitoring_summary(report_dir, subject: Optional[str] = None) -> dict:
    """``summary.json`` of a ``medanalysis monitor`` report folder, checked."""
    from pathlib import Path

    path = Path(report_dir) / "summary.json" if Path(report_dir).is_dir() else Path(report_dir)
    if not path.is_file():
        raise InputError(subject or report_dir, "no monitoring report here (summary.json missing)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, json.JSONDecodeError) as error:
        raise InputError(path, f"unreadable monitoring report ({type(error).__name__})") from None
    lesions = summary.get("lesions") if isinstance(summary, dict) else None
    if not isinstance(lesions, list):
        raise InputError(path, "not a monitoring report (no lesion list)")
    for lesion in lesions:
        if not isinstance(lesion, dict) or lesion.get("status") not in STATUS_CODES or "id" not in lesion:
            raise InputError(path, "monitoring report holds a lesion without id or known status")
        centroid = lesion.get("centroid_ras")
        if not (isinstance(centroid, list) and len(centroid) == 3 and
                all(isinstance(v, (int, float)) and np.isfinite(v) for v in centroid)):
            raise InputError(path, f"lesion {lesion.get('id')} has no finite centroid")
    return summary


def build_monitoring_report(summary: dict, seg, lesion_segment_number: int, source_datasets: list,
                            time_point: str = "baseline", model_name: str = "MedAnalysis"):
    """The Comprehensive 3D SR data set for ``summary`` at ``time_point``, referencing segment
    ``lesion_segment_number`` of ``seg`` (whose patient and study it carries)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    if time_point not in TIME_POINTS:
        raise InputError("time point", f"'{time_point}' is not one of {', '.join(TIME_POINTS)}")
    baseline = time_point == "baseline"
    series_uid = str(source_datasets[0].SeriesInstanceUID)
    frame_of_reference = str(seg.FrameOfReferenceUID)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid_from("medanalysis-device", str(__version__)), name="MedAnalysis",
            manufacturer_name="MedAnalysis", model_name=model_name[:64])))
    algorithm = hd.sr.AlgorithmIdentification(name="MedAnalysis monitor", version=str(__version__))
    time_context = hd.sr.TimePointContext(time_point="baseline" if baseline else "follow-up",
                                          time_point_type=codes.DCM.Baseline if baseline else None,
                                          time_point_order=1 if baseline else 2)
    groups = []
    for lesion in summary["lesions"]:
        lesion_id = str(lesion["id"])
        volume = float(lesion.get("volume_baseline_ml" if baseline else "volume_followup_ml") or 0.0)
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid(summary, lesion_id),
                                                         identifier=f"Lesion {lesion_id}"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=int(lesion_segment_number),
                source_series=hd.sr.SourceSeriesForSegmentation(series_uid)),
            time_point_context=time_context, finding_type=codes.SCT.Lesion, algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=round(volume, 4),
                                            unit=coded(("UCUM", "ml", "milliliter")), algorithm_id=algorithm)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=coded(CHANGED_STATUS),
                                                                 value=coded(STATUS_CODES[lesion["status"]]))])
        if baseline:  # the report's centroids are in baseline scanner space (RAS): DICOM is LPS
            centre_lps = geometry.ras_to_lps_points(np.array([lesion["centroid_ras"]], dtype=float))
            group[0].ContentSequence.append(hd.sr.Scoord3DContentItem(
                name=codes.DCM.Center, graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                graphic_data=centre_lps, frame_of_reference_uid=frame_of_reference,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        groups.append(group)
    content = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
                                      imaging_measurements=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hd.sr.Comprehensive3DSR(
            evidence=[seg], content=content[0], series_instance_uid=hd.UID(),
            series_number=int(seg.SeriesNumber) + 1, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="MedAnalysis", is_complete=True, is_final=False, is_verified=False,
            series_description=f"MedAnalysis lesion monitoring ({'baseline' if baseline else 'follow-up'})")


__all__ = ["STATUS_CODES", "TIME_POINTS", "build_monitoring_report", "load_monitoring_summary", "tracking_uid"]
