"""RegistrationLogic: register two volume nodes into a transform node (no Qt).

The transform node's *from-parent* transform is the ITK result (fixed -> moving) in RAS, so a
moving volume (or segmentation) placed under it appears aligned with the fixed volume in
Slicer's views; :meth:`RegistrationLogic.applyTransform` does that in one call. Masks come from
volume nodes or from one segment of a segmentation node; landmarks from markups nodes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import numpy as np

from .. import mrml
from ..core import geometry
from ..core import register as core
from ..core.errors import InputError
from ..core.progress import CancelToken, ProgressCallback
from ..core.register import RegistrationFailed, RegistrationParameters
from .base import LogicBase


@dataclasses.dataclass
class RegistrationOutputs:
    transformNode: object
    resampledVolumeNode: Optional[object]
    checkerboardVolumeNode: Optional[object]
    differenceVolumeNode: Optional[object]
    qa: dict


class RegistrationLogic(LogicBase):
    """Runs :func:`MedAnalysisLib.core.register.register_images` on MRML nodes.

    Output nodes are added to the scene only after the registration succeeded, so a
    cancelled or failed run leaves the scene as it was.
    """

    @staticmethod
    def presets() -> dict:
        return {name: entry["description"] for name, entry in core.PRESETS.items()}

    # --- inputs -------------------------------------------------------------------------------

    @staticmethod
    def landmarksLps(markupsNode) -> Optional[List[List[float]]]:
        """Control-point positions of a markups node (world RAS) as LPS points (mm)."""
        if markupsNode is None:
            return None
        points = []
        for index in range(markupsNode.GetNumberOfControlPoints()):
            position = [0.0, 0.0, 0.0]
            markupsNode.GetNthControlPointPositionWorld(index, position)
            points.append(position)
        return geometry.ras_to_lps_points(np.array(points).reshape(-1, 3)).tolist()

    # --- registration -------------------------------------------------------------------------

    def register(self, fixedVolumeNode, movingVolumeNode, parameters: Optional[RegistrationParameters] = None,
                 fixedMaskNode=None, fixedMaskSegmentId: Optional[str] = None,
                 movingMaskNode=None, movingMaskSegmentId: Optional[str] = None,
                 initialTransformNode=None, fixedLandmarksNode=None, movingLandmarksNode=None,
                 outputTransformNode=None, createResampledVolume: bool = True, resampledVolumeNode=None,
                 placeMovingUnderTransform: bool = False, progress: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelToken] = None) -> RegistrationOutputs:
        """Register ``movingVolumeNode`` to ``fixedVolumeNode``.

        Args:
            parameters: preset, metric, initialization, threads... (default: rigid, Mattes MI).
            fixedMaskNode / movingMaskNode: volume node (non-zero = inside) or segmentation node
                (``...SegmentId``: one segment, else all).
            initialTransformNode: start from this transform (its from-parent, fixed -> moving).
            fixedLandmarksNode / movingLandmarksNode: markups with corresponding points (>= 3):
                a rigid landmark fit initializes the registration.
            outputTransformNode: node to update instead of creating a new transform node
                (must be of a class that can hold the result).
            createResampledVolume / resampledVolumeNode: also resample the moving volume onto the
                fixed grid (a new node, or this one).
            placeMovingUnderTransform: put the moving volume under the result (shows it aligned).
            progress, cancel: per-level/iteration progress and cancellation.

        Returns:
            the transform node, the optional resampled/checkerboard/difference volume nodes and
            the QA summary (metric before/after, iterations, seconds, mask Dice).
        """
        if fixedVolumeNode is None or movingVolumeNode is None:
            raise InputError("input", "select both a fixed and a moving volume")
        parameters = parameters or RegistrationParameters()
        report = self.reporter(progress, cancel)
        fixedName, movingName = fixedVolumeNode.GetName(), movingVolumeNode.GetName()
        fixedImage = mrml.imageFromVolumeNode(fixedVolumeNode)
        movingImage = mrml.imageFromVolumeNode(movingVolumeNode)
        fixedMask = self.maskImageFromNode(fixedMaskNode, fixedMaskSegmentId, fixedImage)
        movingMask = self.maskImageFromNode(movingMaskNode, movingMaskSegmentId, movingImage)
        initialTransform = None
        if initialTransformNode is not None:
            initialTransform = mrml.sitkTransformFromNode(initialTransformNode)
        if fixedLandmarksNode is not None or movingLandmarksNode is not None:
            parameters = dataclasses.replace(parameters, fixed_landmarks_lps=self.landmarksLps(fixedLandmarksNode),
                                             moving_landmarks_lps=self.landmarksLps(movingLandmarksNode))
        subjects = {"fixed": mrml.subjectOf(fixedVolumeNode), "moving": mrml.subjectOf(movingVolumeNode),
                    "fixed_mask": mrml.subjectOf(fixedMaskNode) if fixedMaskNode is not None else None,
                    "moving_mask": mrml.subjectOf(movingMaskNode) if movingMaskNode is not None else None}
        result = core.register_images(fixedImage, movingImage, parameters, fixedMask, movingMask, initialTransform,
                                      report.sub(0.0, 0.9), subjects)
        resampled = None
        if createResampledVolume or resampledVolumeNode is not None:
            report(0.92, "resampling the moving volume onto the fixed grid")
            interpolation = "nearest" if movingVolumeNode.IsA("vtkMRMLLabelMapVolumeNode") else parameters.interpolation
            resampled = core.resample_moving(movingImage, fixedImage, result.transform, interpolation)
        report.cancel.raise_if_cancelled()

        record = self.provenance("register", parameters, [fixedVolumeNode, movingVolumeNode, fixedMaskNode,
                                                          movingMaskNode])
        record["qa"] = result.summary()
        created = []
        try:
            transformNode = mrml.transformNodeFromSitk(result.transform, self.scene,
                                                       name=f"{movingName}_to_{fixedName}", node=outputTransformNode,
                                                       provenance=record)
            if outputTransformNode is None:
                created.append(transformNode)
            resampledNode = None
            if resampled is not None:
                resampledNode = mrml.volumeNodeFromImage(
                    resampled, self.scene, name=f"{movingName}_registered", node=resampledVolumeNode,
                    labelmap=movingVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"), provenance=record)
                if resampledVolumeNode is None:
                    created.append(resampledNode)
            checkerboardNode = differenceNode = None
            if result.checkerboard is not None:
                checkerboardNode = mrml.volumeNodeFromImage(result.checkerboard, self.scene,
                                                            name=f"{movingName}_checkerboard", provenance=record)
                created.append(checkerboardNode)
            if result.difference is not None:
                differenceNode = mrml.volumeNodeFromImage(result.difference, self.scene,
                                                          name=f"{movingName}_difference", provenance=record)
                created.append(differenceNode)
        except Exception:
            for node in created:
                self.scene.RemoveNode(node)
            raise
        if placeMovingUnderTransform:
            self.applyTransform(movingVolumeNode, transformNode)
        report(1.0, f"registration done: {result.metric} {result.initial_metric:.4g} -> {result.final_metric:.4g}")
        return RegistrationOutputs(transformNode, resampledNode, checkerboardNode, differenceNode, result.summary())

    # --- using the result ---------------------------------------------------------------------

    def applyTransform(self, node, transformNode, harden: bool = False) -> None:
        """Place a volume, segmentation or markups node under ``transformNode`` (None: remove it),
        optionally hardening (resampling) it into its own geometry."""
        if node is None:
            raise InputError("node", "no node to transform")
        node.SetAndObserveTransformNodeID(transformNode.GetID() if transformNode is not None else None)
        if harden and transformNode is not None:
            import slicer

            slicer.vtkSlicerTransformLogic().hardenTransform(node)

    def saveTransform(self, transformNode, path: "str | Path") -> Path:
        """Write the node as an ITK transform file (fixed -> moving, LPS), atomically, with a provenance sidecar."""
        return core.write_transform(mrml.sitkTransformFromNode(transformNode), path,
                                    provenance=mrml.getProvenance(transformNode))


__all__ = ["RegistrationLogic", "RegistrationParameters", "RegistrationOutputs", "RegistrationFailed"]
