"""Conventions every logic class follows.

* one parameter dataclass per operation, shared by panel, logic, CLI and batch;
* ``progress(fraction, message)`` callback and a :class:`CancelToken`;
* a cancelled or failed run leaves the scene as it was (outputs are added only at the end)
  and never replaces an existing file (see :func:`MedAnalysisLib.core.progress.atomic_output`);
* every output node carries provenance (attribute ``MedAnalysis.Provenance``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Optional, TypeVar

from .. import mrml
from ..core.errors import InputError
from ..core.progress import CancelToken, ProgressCallback, ProgressReporter
from ..core.provenance import array_sha256, make_provenance

P = TypeVar("P")


class LogicBase:
    """Holds the scene and builds progress reporters and provenance records."""

    def __init__(self, scene=None):
        self.scene = mrml.defaultScene(scene)

    @contextlib.contextmanager
    def sceneTransaction(self) -> Iterator[None]:
        """Nodes added inside are removed again if the block fails or is cancelled: the scene is
        left as it was (the convention every logic class promises)."""
        before = {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}
        try:
            yield
        except BaseException:
            added = [self.scene.GetNthNode(i) for i in range(self.scene.GetNumberOfNodes())]
            for node in added:
                if node is not None and node.GetID() not in before and self.scene.IsNodePresent(node):
                    self.scene.RemoveNode(node)
            raise

    @staticmethod
    def reporter(progress: Optional[ProgressCallback], cancel: Optional[CancelToken]) -> ProgressReporter:
        return ProgressReporter(progress, cancel)

    @staticmethod
    def nodeChecksum(volumeNode) -> str:
        import slicer

        return array_sha256(slicer.util.arrayFromVolume(volumeNode))

    @staticmethod
    def maskImageFromNode(maskNode, segmentId: Optional[str] = None, referenceImage=None):
        """Binary mask image from a labelmap/scalar volume node or one segment of a segmentation node
        (all segments when ``segmentId`` is None), on ``referenceImage``'s grid for segmentations."""
        if maskNode is None:
            return None
        if maskNode.IsA("vtkMRMLSegmentationNode"):
            segmentation = maskNode.GetSegmentation()
            ids = [segmentId] if segmentId else [segmentation.GetNthSegmentID(i)
                                                 for i in range(segmentation.GetNumberOfSegments())]
            if not ids:
                raise InputError(mrml.subjectOf(maskNode), "segmentation has no segment to use as a mask")
            if segmentId and segmentation.GetSegment(segmentId) is None:
                raise InputError(mrml.subjectOf(maskNode), f"segmentation has no segment '{segmentId}'")
            return mrml.labelmapFromSegmentationNode(maskNode, referenceImage=referenceImage, segmentIds=ids)
        return mrml.imageFromVolumeNode(maskNode)

    def provenance(self, operation: str, parameters: Any, inputNodes=(), modelSha256: Optional[str] = None,
                   inputChecksums: Optional[dict] = None) -> dict:
        checksums = dict(inputChecksums or {})
        for node in inputNodes:
            if node is not None and node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is not None:
                checksums[node.GetName()] = self.nodeChecksum(node)
        return make_provenance(operation, parameters, checksums, modelSha256)


def replaceParameters(parameters: P, **changes) -> P:
    """Copy of a parameter dataclass with some fields changed (presets are data)."""
    return dataclasses.replace(parameters, **changes)
