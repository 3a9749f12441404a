"""MonitoringLogic: lesion detection, localization and baseline vs follow-up change."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .. import mrml
from ..core import geometry
from ..core.errors import InputError
from ..core.longitudinal import MonitoringParameters, match_lesions  # noqa: F401 - declared in core, re-exported
from ..core.progress import CancelToken, ProgressCallback
from ..core.quantify import TISSUE_NAMES, measure_lesions
from ..core.register import RegistrationParameters, register_images
from ..core.report import write_report
from .base import LogicBase
from .segmentationlogic import SegmentationLogic, SegmentationParameters

PATIENT_KEY_ATTRIBUTE = "MedAnalysis.PatientKey"


@dataclasses.dataclass
class DetectionOutputs:
    lesions: list
    tableNode: object
    markupsNode: object
    componentImage: sitk.Image


@dataclasses.dataclass
class MonitoringOutputs:
    result: dict                 # {"lesions": [...], "summary": {...}} (DESIGN.md's monitor --json)
    tableNode: object
    markupsNode: object
    transformNode: object        # follow-up -> baseline alignment (put the follow-up under it)
    baselineSegmentationNode: object
    followupSegmentationNode: object
    reportPath: Optional[Path]
    warnings: list
    seconds: dict


class MonitoringLogic(LogicBase):

    # --- detection ----------------------------------------------------------------------------

    def lesionMaskImage(self, segmentationNode, volumeImage: sitk.Image, segmentName: str) -> sitk.Image:
        """Binary lesion mask on the volume's grid (empty when the segment does not exist)."""
        segmentation = segmentationNode.GetSegmentation()
        segmentId = None
        for index in range(segmentation.GetNumberOfSegments()):
            if segmentation.GetNthSegment(index).GetName().lower() == segmentName.lower():
                segmentId = segmentation.GetNthSegmentID(index)
        if segmentId is None:
            return geometry.image_from_array(np.zeros(geometry.array_view(volumeImage).shape[:3], np.uint8),
                                             reference=volumeImage)
        labels = mrml.labelmapFromSegmentationNode(segmentationNode, referenceImage=volumeImage, segmentIds=[segmentId])
        return sitk.Cast(labels > 0, sitk.sitkUInt8)

    def tissueImage(self, segmentationNode, volumeImage: sitk.Image) -> Optional[sitk.Image]:
        """Labelmap with 1 CSF, 2 gray matter, 3 white matter when those segments exist."""
        wanted = {name.lower(): code for code, name in TISSUE_NAMES.items()}
        specs = mrml.segmentSpecs(segmentationNode)
        if not any(spec.name.lower() in wanted for spec in specs):
            return None
        labelImage = mrml.labelmapFromSegmentationNode(segmentationNode, referenceImage=volumeImage)
        labels = geometry.array_view(labelImage)  # labelImage must outlive the view
        lookup = np.zeros(max([s.label for s in specs] + [0]) + 1, np.uint8)
        for spec in specs:
            lookup[spec.label] = wanted.get(spec.name.lower(), 0)
        return geometry.image_from_array(lookup[labels], reference=volumeImage)

    def detect(self, volumeNode, segmentationNode, parameters: Optional[MonitoringParameters] = None,
               namePrefix: str = "") -> DetectionOutputs:
        """Lesions of one time point: table node and markups point list at the centroids (L1, L2...)."""
        parameters = parameters or MonitoringParameters()
        image = mrml.imageFromVolumeNode(volumeNode)
        mask = self.lesionMaskImage(segmentationNode, image, parameters.lesionSegmentName)
        lesions, components = measure_lesions(mask, image, self.tissueImage(segmentationNode, image),
                                              parameters.min_lesion_ml)
        rows = [{k: v for k, v in l.to_dict().items() if k not in ("bbox_ras_min", "bbox_ras_max", "centroid_ras",
                                                                    "label")}
                | {"centroid_r": l.centroid_ras[0], "centroid_a": l.centroid_ras[1], "centroid_s": l.centroid_ras[2]}
                for l in lesions]
        name = f"{namePrefix}{volumeNode.GetName()}_lesions"
        table = mrml.tableNodeFromRows(rows, self.scene, name=name,
                                       columns=None if rows else ["id", "volume_ml", "centroid_r", "centroid_a",
                                                                  "centroid_s"])
        markups = mrml.markupsFromPoints([l.centroid_ras for l in lesions], [l.id for l in lesions], self.scene,
                                         name=name)
        return DetectionOutputs(lesions, table, markups, components)

    # --- longitudinal -------------------------------------------------------------------------

    def monitor(self, baselineVolumeNode, followupVolumeNode, parameters: Optional[MonitoringParameters] = None,
                baselineSegmentationNode=None, followupSegmentationNode=None, reportDir=None,
                registrationTransform: Optional[sitk.Transform] = None, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> MonitoringOutputs:
        parameters = (parameters or MonitoringParameters()).validate()
        if baselineVolumeNode is None or followupVolumeNode is None:
            raise InputError("input", "select both a baseline and a follow-up volume")
        with self.sceneTransaction():  # cancelled or failed: no segmentation, table or markups left behind
            return self._monitor(baselineVolumeNode, followupVolumeNode, parameters, baselineSegmentationNode,
                                 followupSegmentationNode, reportDir, registrationTransform,
                                 self.reporter(progress, cancel))

    def _monitor(self, baselineVolumeNode, followupVolumeNode, parameters, baselineSegmentationNode,
                 followupSegmentationNode, reportDir, registrationTransform, report) -> MonitoringOutputs:
        warnings = []
        keys = [node.GetAttribute(PATIENT_KEY_ATTRIBUTE) for node in (baselineVolumeNode, followupVolumeNode)]
        if all(keys) and keys[0] != keys[1]:
            warnings.append("baseline and follow-up carry different pseudonymous patient keys: "
                            "check that they belong to the same patient")
        elif any(keys) and not all(keys):
            missing = "baseline" if not keys[0] else "follow-up"
            warnings.append(f"the {missing} carries no patient key (not imported from DICOM here) while the other "
                            "does: check that both scans belong to the same patient")
        for label, volumeNode, segmentationNode in (("baseline", baselineVolumeNode, baselineSegmentationNode),
                                                    ("follow-up", followupVolumeNode, followupSegmentationNode)):
            if segmentationNode is not None and not mrml.segmentationOnVolumeGrid(segmentationNode, volumeNode):
                warnings.append(f"the {label} segmentation ({mrml.subjectOf(segmentationNode)}) is on another grid "
                                f"than the {label} image: it was resampled onto the image (nearest neighbour)")
        seconds = {}
        baseline = mrml.imageFromVolumeNode(baselineVolumeNode)
        followup = mrml.imageFromVolumeNode(followupVolumeNode)
        overlap = geometry.bounds_overlap_mm(baseline, followup)
        if np.any(overlap <= 0):
            raise InputError(mrml.subjectOf(followupVolumeNode), "field of view does not overlap the baseline's in scanner "
                             f"coordinates (overlap {np.round(overlap, 1).tolist()} mm): not a follow-up of the same "
                             "anatomy, or its position information is wrong")

        started = time.perf_counter()
        if registrationTransform is None:
            report(0.0, "registering follow-up to baseline")
            registration = register_images(baseline, followup,
                                           RegistrationParameters(preset=parameters.registrationPreset),
                                           report=report.sub(0.0, 0.3),
                                           subjects={"fixed": mrml.subjectOf(baselineVolumeNode),
                                                     "moving": mrml.subjectOf(followupVolumeNode)})
            transform, registrationSummary = registration.transform, registration.summary()
        else:  # a transform from an earlier registration step (baseline -> follow-up points, ITK)
            transform, registrationSummary = registrationTransform, {"given": True}
        seconds["register"] = round(time.perf_counter() - started, 3)

        started = time.perf_counter()
        segmentationLogic = SegmentationLogic(self.scene)
        segmentationParameters = SegmentationParameters(model=parameters.model, device=parameters.device,
                                                        brainMask=parameters.brainMask)
        modelSha = None
        if baselineSegmentationNode is None:
            report(0.3, "segmenting baseline")
            out = segmentationLogic.segment(baselineVolumeNode, segmentationParameters, progress=report.sub(0.3, 0.55))
            baselineSegmentationNode, modelSha = out.segmentationNode, out.modelSha256
        if followupSegmentationNode is None:
            report(0.55, "segmenting follow-up")
            out = segmentationLogic.segment(followupVolumeNode, segmentationParameters, progress=report.sub(0.55, 0.8))
            followupSegmentationNode, modelSha = out.segmentationNode, out.modelSha256
        seconds["segment"] = round(time.perf_counter() - started, 3)

        started = time.perf_counter()
        report(0.8, "detecting and matching lesions")
        baselineDetection = self.detect(baselineVolumeNode, baselineSegmentationNode, parameters, "baseline_")
        followupDetection = self.detect(followupVolumeNode, followupSegmentationNode, parameters, "followup_")
        for lesion in followupDetection.lesions:
            lesion.id = "F" + lesion.id[1:]
        result = match_lesions(baselineDetection.lesions, baselineDetection.componentImage, followupDetection.lesions,
                               followupDetection.componentImage, transform, parameters)
        result["registration"] = registrationSummary
        seconds["detect_match"] = round(time.perf_counter() - started, 3)
        report.cancel.raise_if_cancelled()

        record = self.provenance("monitor", parameters, [baselineVolumeNode, followupVolumeNode], modelSha256=modelSha)
        rows = [{"id": l["id"], "status": l["status"], "event": l["event"] or "",
                 "centroid_r": l["centroid_ras"][0], "centroid_a": l["centroid_ras"][1],
                 "centroid_s": l["centroid_ras"][2], "volume_baseline_ml": l["volume_baseline_ml"],
                 "volume_followup_ml": l["volume_followup_ml"], "volume_change_ml": l["volume_change_ml"]}
                for l in result["lesions"]]
        tableNode = mrml.tableNodeFromRows(rows, self.scene, name="Lesion changes",
                                           columns=None if rows else ["id", "status", "volume_baseline_ml"])
        markupsNode = mrml.markupsFromPoints([l["centroid_ras"] for l in result["lesions"]],
                                             [l["id"] for l in result["lesions"]], self.scene, name="Lesions")
        transformNode = mrml.transformNodeFromSitk(transform, self.scene,
                                                   name=f"{followupVolumeNode.GetName()}_to_baseline", provenance=record)
        for node in (tableNode, markupsNode):
            mrml.setProvenance(node, record)
        # intermediate per-time-point nodes are kept only through the merged table and markups
        for detection in (baselineDetection, followupDetection):
            self.scene.RemoveNode(detection.tableNode)
            self.scene.RemoveNode(detection.markupsNode)

        reportPath = None
        if reportDir is not None:
            report(0.9, "writing the report")
            started = time.perf_counter()
            grid = geometry.grid_of(baseline)
            images = {
                "baseline": baseline,
                "followup": geometry.resample_to_grid(sitk.Cast(followup, sitk.sitkFloat32), grid, sitk.sitkLinear,
                                                      0.0, transform),
                "baseline_mask": baselineDetection.componentImage,
                "followup_mask": geometry.resample_to_grid(followupDetection.componentImage, grid,
                                                           sitk.sitkNearestNeighbor, 0, transform),
            }
            reportPath = write_report(Path(reportDir), result, record, images,
                                      inputs={"baseline": baselineVolumeNode.GetName(),
                                              "followup": followupVolumeNode.GetName()})
            seconds["report"] = round(time.perf_counter() - started, 3)
        result["warnings"] = warnings
        report(1.0, "monitoring done")
        return MonitoringOutputs(result, tableNode, markupsNode, transformNode, baselineSegmentationNode,
                                 followupSegmentationNode, reportPath, warnings, seconds)
