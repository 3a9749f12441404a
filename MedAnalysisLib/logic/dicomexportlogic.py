"""DicomExportLogic: a segmentation node back to the hospital's world, as a DICOM SEG on the
series it was made from (and a monitoring report as a TID 1500 SR referencing it).

Everything is checked before anything is written; the SEG and the SR are published together
(all or nothing) into the output folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from .. import mrml
from ..core.errors import InputError
from ..core.export_parameters import DicomExportParameters
from ..core.progress import CancelToken, ProgressCallback, atomic_outputs
from .base import LogicBase

SEG_NAME = "seg.dcm"
SR_NAME = "sr.dcm"
LESION_CODE = "52988006"  # SNOMED CT 'Lesion'


def algorithm_from_provenance(record: Optional[dict]):
    """The SEG's algorithm identification from a segmentation's provenance (None: not ours)."""
    from ..core.dicom_seg import Algorithm

    if not record or record.get("operation") != "segment":
        return None
    parameters = record.get("parameters") or {}
    model = str(parameters.get("model") or "model")
    sha = str(record.get("model_sha256") or "")
    return Algorithm(name=Path(model).name if os.sep in model else model, version=sha or str(record.get("version")),
                     parameters={"model_sha256": sha, "medanalysis_version": str(record.get("version", ""))})


def lesion_segment_number(specs: list, name: str = "Lesion") -> Optional[int]:
    """Segment number (1-based, in SEG order) of the lesion segment: coded as Lesion, else named so."""
    for number, spec in enumerate(specs, start=1):
        if spec.type is not None and spec.type[1] == LESION_CODE:
            return number
    for number, spec in enumerate(specs, start=1):
        if spec.name.lower() == name.lower():
            return number
    return None


class DicomExportLogic(LogicBase):
    """Export segmentations as DICOM SEG (and monitoring reports as SR) onto their source series."""

    def exportSegmentation(self, segmentationNode, reference: "str | os.PathLike", outputDir: "str | os.PathLike",
                           parameters: Optional[DicomExportParameters] = None, algorithm=None,
                           progress: Optional[ProgressCallback] = None,
                           cancel: Optional[CancelToken] = None) -> dict:
        """Write ``outputDir/seg.dcm`` (and ``sr.dcm`` with ``parameters.reportDir``).

        Args:
            segmentationNode: the segmentation (any grid overlapping the reference series).
            reference: folder, ZIP or DICOMDIR holding the source series.
            algorithm: :class:`~MedAnalysisLib.core.dicom_seg.Algorithm`; default from the node's
                provenance (a MedAnalysis segmentation), else the segments are marked MANUAL.
        Returns:
            A summary: files written, SEG/SR UIDs, segments, frames.
        """
        if algorithm is None:
            algorithm = algorithm_from_provenance(mrml.getProvenance(segmentationNode))
        subject = mrml.subjectOf(segmentationNode)
        parameters = (parameters or DicomExportParameters()).validate()
        return self.exportLabelmap(lambda: (mrml.labelmapFromSegmentationNode(segmentationNode),
                                            mrml.segmentSpecs(segmentationNode)),
                                   subject, reference, outputDir, parameters, algorithm, progress, cancel)

    def exportLabelmap(self, labelsAndSpecs, subject: str, reference: "str | os.PathLike",
                       outputDir: "str | os.PathLike", parameters: Optional[DicomExportParameters] = None,
                       algorithm=None, progress: Optional[ProgressCallback] = None,
                       cancel: Optional[CancelToken] = None) -> dict:
        """:meth:`exportSegmentation` from a label image and its segment specs, without a node
        (``labelsAndSpecs``: the pair, or a function giving it once the inputs are checked)."""
        from ..core import dicom_seg, dicom_sr
        from ..core.dicom_deid import Deidentifier

        parameters = (parameters or DicomExportParameters()).validate()
        report = self.reporter(progress, cancel)
        started = time.perf_counter()
        outputDir = Path(outputDir)
        if outputDir.exists() and not outputDir.is_dir():
            raise InputError(outputDir, "output exists and is not a folder")
        summary = (dicom_sr.load_monitoring_summary(parameters.reportDir, parameters.reportDir)
                   if parameters.reportDir else None)
        deidentifier = Deidentifier.from_key_file(parameters.deidKey) if parameters.anonymize else None

        report(0.05, "reading the reference series")
        series = dicom_seg.read_reference_series(reference, parameters.seriesUid)
        report.cancel.raise_if_cancelled()
        report(0.3, "sampling the segmentation on the source slices")
        labels, specs = labelsAndSpecs() if callable(labelsAndSpecs) else labelsAndSpecs
        seg, written, sources = dicom_seg.build_segmentation(labels, specs, series, subject, algorithm, deidentifier)
        report.cancel.raise_if_cancelled()
        datasets = {SEG_NAME: seg}
        lesion_number = None
        if summary is not None:
            lesion_number = lesion_segment_number(written)
            if lesion_number is None:
                raise InputError(subject, "has no Lesion segment on the reference series for the report's "
                                          "lesions to reference")
            report(0.8, "writing the structured report")
            datasets[SR_NAME] = dicom_sr.build_monitoring_report(
                summary, seg, lesion_number, sources, parameters.timePoint,
                model_name=algorithm.name if algorithm is not None else "MedAnalysis")
        report(0.9, "writing DICOM files")
        paths = [outputDir / name for name in datasets]
        with atomic_outputs(paths) as temporaries:
            for temporary, dataset in zip(temporaries, datasets.values()):
                dataset.save_as(temporary, enforce_file_format=True)
        report(1.0, "DICOM export done")
        result = {
            "seg": os.fspath(paths[0]), "seg_sop_instance_uid": str(seg.SOPInstanceUID),
            "seg_series_uid": str(seg.SeriesInstanceUID), "frames": int(seg.NumberOfFrames),
            "source_instances": len(sources), "source_series_uid": str(sources[0].SeriesInstanceUID),
            "segments": [{"number": n, "label": s.label, "name": s.name} for n, s in enumerate(written, start=1)],
            "anonymized": bool(parameters.anonymize), "seconds": round(time.perf_counter() - started, 3),
        }
        if summary is not None:
            result.update({"sr": os.fspath(paths[1]), "sr_sop_instance_uid": str(datasets[SR_NAME].SOPInstanceUID),
                           "lesions": len(summary["lesions"]), "lesion_segment": lesion_number,
                           "time_point": parameters.timePoint})
        return result

    @staticmethod
    def loadIntoSlicerDicomDatabase(paths) -> list:
        """Inside the Slicer application: import the written files into Slicer's DICOM database and
        load them back (the SEG through the DICOM SEG plugin, the SR through its plugin).
        Returns the loaded node IDs."""
        import pydicom
        from DICOMLib import DICOMUtils  # Slicer application only

        DICOMUtils.importDicom(os.fspath(Path(paths[0]).parent))
        uids = [str(pydicom.dcmread(os.fspath(p), stop_before_pixels=True).SeriesInstanceUID) for p in paths]
        return list(DICOMUtils.loadSeriesByUID(uids))


__all__ = ["DicomExportLogic", "DicomExportParameters", "algorithm_from_provenance",
           "lesion_segment_number"]
