"""BrainExtractionLogic: brain mask of a head volume node, as a segmentation node "Brain"."""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

from .. import mrml
from ..core import brain
from ..core.errors import InputError
from ..core.labels import BRAIN_SEGMENT
from ..core.progress import CancelToken, ProgressCallback
from ..core.brain_parameters import BrainExtractionParameters  # noqa: F401 (re-exported)
from .base import LogicBase


@dataclasses.dataclass
class BrainExtractionOutputs:
    segmentationNode: object
    maskedVolumeNode: Optional[object]
    volumeMl: float
    device: str
    seconds: dict


class BrainExtractionLogic(LogicBase):
    """deepbet brain extraction on MRML volume nodes (the network is loaded once per device)."""

    def __init__(self, scene=None):
        super().__init__(scene)
        self._extractors: dict = {}

    def extractor(self, device: str) -> brain.BrainExtractor:
        if device not in self._extractors:
            self._extractors = {device: brain.BrainExtractor(device)}
        return self._extractors[device]

    def extractBrain(self, inputVolumeNode, parameters: Optional[BrainExtractionParameters] = None,
                     progress: Optional[ProgressCallback] = None,
                     cancel: Optional[CancelToken] = None) -> BrainExtractionOutputs:
        parameters = (parameters or BrainExtractionParameters()).validate()
        if inputVolumeNode is None:
            raise InputError("input", "no input volume selected")
        report = self.reporter(progress, cancel)
        started = time.perf_counter()
        image = mrml.imageFromVolumeNode(inputVolumeNode)
        brain.check_brain_input(image, mrml.subjectOf(inputVolumeNode))  # before the network is loaded
        report(0.0, "loading the brain-extraction network")
        extractor = self.extractor(parameters.device)
        loaded = time.perf_counter()
        result = extractor.extract(image, parameters.threshold, subject=mrml.subjectOf(inputVolumeNode),
                                   progress=report.sub(0.05, 0.9))
        report.cancel.raise_if_cancelled()
        record = self.provenance("brain-mask", parameters, [inputVolumeNode])
        record["network"] = {"package": f"deepbet=={brain.DEEPBET_VERSION}", "sha256": brain.DEEPBET_SHA256}
        segmentationNode = mrml.segmentationNodeFromLabelmap(result.mask, self.scene,
                                                             name=f"{inputVolumeNode.GetName()}_brain",
                                                             segments=[BRAIN_SEGMENT], provenance=record)
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolumeNode)
        maskedNode = None
        if parameters.maskedVolume:
            maskedNode = mrml.volumeNodeFromImage(brain.masked_image(image, result.mask), self.scene,
                                                  name=f"{inputVolumeNode.GetName()}_brain_masked", provenance=record)
        report(1.0, f"brain volume {result.volume_ml:.1f} mL")
        seconds = {"load": round(loaded - started, 3), "extract": round(time.perf_counter() - loaded, 3)}
        return BrainExtractionOutputs(segmentationNode, maskedNode, result.volume_ml, result.device, seconds)

    @staticmethod
    def maskImage(segmentationNode, referenceImage=None):
        """The brain mask (uint8 0/1) of a segmentation node made by :meth:`extractBrain`."""
        return mrml.labelmapFromSegmentationNode(segmentationNode, referenceImage=referenceImage)
