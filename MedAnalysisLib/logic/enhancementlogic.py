"""EnhancementLogic: the enhancement pipeline on MRML volume nodes."""

from __future__ import annotations

import dataclasses
from typing import Optional

from .. import mrml
from ..core import enhance
from ..core.enhance import EnhancementParameters
from ..core.errors import InputError
from ..core.progress import CancelToken, ProgressCallback
from .base import LogicBase


@dataclasses.dataclass
class EnhancementOutputs:
    outputVolumeNode: object
    biasFieldNode: Optional[object]
    steps: list
    seconds: dict


class EnhancementLogic(LogicBase):
    """Runs :func:`MedAnalysisLib.core.enhance.enhance_image` on volume nodes.

    The input node is never modified unless ``inPlace`` is True; new nodes are added to
    the scene only after every step succeeded, so a cancelled or failed run leaves the
    scene as it was.
    """

    @staticmethod
    def presets() -> dict:
        return {name: entry["description"] for name, entry in enhance.PRESETS.items()}

    def enhance(self, inputVolumeNode, parameters: EnhancementParameters, maskNode=None, maskSegmentId=None,
                referenceVolumeNode=None, outputVolumeNode=None, biasFieldOutput: bool = False,
                inPlace: bool = False, progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None) -> EnhancementOutputs:
        if inputVolumeNode is None:
            raise InputError("input", "no input volume selected")
        report = self.reporter(progress, cancel)
        image = mrml.imageFromVolumeNode(inputVolumeNode)
        mask = self.maskImageFromNode(maskNode, maskSegmentId, image)
        reference = mrml.imageFromVolumeNode(referenceVolumeNode) if referenceVolumeNode is not None else None
        result = enhance.enhance_image(image, parameters, mask=mask, reference=reference,
                                       report=report.sub(0.0, 0.95), subject=mrml.subjectOf(inputVolumeNode))
        report.cancel.raise_if_cancelled()
        effective = parameters.with_preset()
        record = self.provenance("enhance", effective, [inputVolumeNode, maskNode, referenceVolumeNode])
        record["steps"] = result.steps
        if inPlace:
            outputVolumeNode = inputVolumeNode
        name = outputVolumeNode.GetName() if outputVolumeNode is not None else f"{inputVolumeNode.GetName()}_enhanced"
        outputVolumeNode = mrml.volumeNodeFromImage(result.image, self.scene, name=name, node=outputVolumeNode,
                                                    provenance=record)
        self.applyDisplayWindow(outputVolumeNode, effective)
        biasNode = None
        if biasFieldOutput and result.bias_field is not None:
            biasNode = mrml.volumeNodeFromImage(result.bias_field, self.scene,
                                                name=f"{inputVolumeNode.GetName()}_bias_field", provenance=record)
        report(1.0, "enhancement done")
        return EnhancementOutputs(outputVolumeNode, biasNode, result.steps, result.seconds)

    def resampleToReference(self, inputVolumeNode, referenceVolumeNode, interpolation: str = "linear",
                            outputVolumeNode=None):
        """New volume node with the input resampled onto the reference volume's grid
        (``nearest`` for labelmaps)."""
        image = mrml.imageFromVolumeNode(inputVolumeNode)
        reference = mrml.imageFromVolumeNode(referenceVolumeNode)
        resampled = enhance.resample_like(image, reference, interpolation)
        record = self.provenance("resample", {"interpolation": interpolation, "reference": referenceVolumeNode.GetName()},
                                 [inputVolumeNode, referenceVolumeNode])
        return mrml.volumeNodeFromImage(resampled, self.scene, name=f"{inputVolumeNode.GetName()}_resampled",
                                        node=outputVolumeNode, labelmap=inputVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"),
                                        provenance=record)

    @staticmethod
    def applyDisplayWindow(volumeNode, parameters: EnhancementParameters) -> None:
        """Set the window/level on the display node (display only: voxels unchanged)."""
        if parameters.display_window is None:
            return
        displayNode = volumeNode.GetDisplayNode()
        if displayNode is None:
            volumeNode.CreateDefaultDisplayNodes()
            displayNode = volumeNode.GetDisplayNode()
        window, level = (float(v) for v in parameters.display_window)
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevel(window, level)


def parametersFromPreset(name: str) -> EnhancementParameters:
    return EnhancementParameters(preset=name).with_preset()


__all__ = ["EnhancementLogic", "EnhancementParameters", "EnhancementOutputs", "parametersFromPreset"]
