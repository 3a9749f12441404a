"""SegmentationLogic: deep-learning segmentation of a volume node into a segmentation node."""

from __future__ import annotations

import dataclasses
from typing import Optional

import SimpleITK as sitk

from .. import mrml, resources
from ..core import brain, geometry
from ..core.errors import InputError
from ..core.labels import BRAIN_TISSUE_SEGMENTS, SegmentSpec
from ..core.progress import CancelToken, ProgressCallback
from ..core.segment.engine import is_brain_model, segment_image
from ..core.segment.models import LoadedModel, load_model
from ..core.segment.parameters import DEFAULT_MODEL, SegmentationParameters  # noqa: F401 (re-exported)
from .base import LogicBase
from .brainlogic import BrainExtractionLogic

@dataclasses.dataclass
class SegmentationOutputs:
    segmentationNode: object
    probabilityNode: Optional[object]
    modelName: str
    modelSha256: str
    device: str
    seconds: dict
    messages: list


def segmentSpecsForModel(model: LoadedModel) -> list[SegmentSpec]:
    """Segment names/colours/terminology for the model's labels (catalog entries first, then
    the project's standard brain tissue names for matching label names)."""
    standard = {s.name.lower(): s for s in BRAIN_TISSUE_SEGMENTS}
    specs = []
    for entry in model.labels:
        value = int(entry.get("value", entry.get("label", 0)))
        if value == 0:
            continue
        name = str(entry.get("name", f"Segment_{value}"))
        known = standard.get(name.lower())
        if "category" in entry or known is None:
            specs.append(SegmentSpec.from_dict({"label": value, "name": name[:1].upper() + name[1:],
                                                "color": entry.get("color", (0.5, 0.5, 0.5)),
                                                "category": entry.get("category"), "type": entry.get("type")}))
        else:
            specs.append(dataclasses.replace(known, label=value))
    return specs


class SegmentationLogic(LogicBase):
    """Runs a catalog or user model on a volume node; outputs a segmentation node."""

    def __init__(self, scene=None):
        super().__init__(scene)
        self._cache: dict = {}
        self.messages: list = []

    def loadModel(self, parameters: SegmentationParameters) -> LoadedModel:
        key = (parameters.model, parameters.trusted)
        if key not in self._cache:
            self._cache = {key: load_model(parameters.model, resources.modelsDir(), trusted=parameters.trusted)}
        return self._cache[key]

    def brainMaskImage(self, inputVolumeNode, image, parameters: SegmentationParameters, brainMaskNode, report,
                       model: LoadedModel):
        """The brain mask on the input grid: from ``brainMaskNode`` when given, from deepbet with
        ``brainMask="auto"`` for a brain tissue model, else None."""
        if brainMaskNode is not None:
            mask = self.maskImageFromNode(brainMaskNode, referenceImage=image)
            if not geometry.same_grid(mask, image, 1e-3):
                mask = geometry.resample_to_grid(mask, geometry.grid_of(image), sitk.sitkNearestNeighbor, 0)
            if not geometry.array_view(mask).any():
                raise InputError(mrml.subjectOf(brainMaskNode), "brain mask is empty (no voxel inside the input's grid)")
            return mask
        if parameters.brainMask != "auto" or not is_brain_model(model.config):
            return None
        try:
            brain.check_brain_input(image, mrml.subjectOf(inputVolumeNode))
        except InputError as error:  # not a head-sized image: the model alone decides what is brain
            self.messages.append(f"brain extraction skipped: {error.problem}")
            return None
        extractor = BrainExtractionLogic(self.scene).extractor(parameters.device)
        return extractor.extract(image, subject=mrml.subjectOf(inputVolumeNode), progress=report).mask

    def segment(self, inputVolumeNode, parameters: Optional[SegmentationParameters] = None,
                outputSegmentationNode=None, progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None, brainMaskNode=None) -> SegmentationOutputs:
        """Segment ``inputVolumeNode``. With a brain mask (``brainMaskNode``, or
        ``parameters.brainMask == "auto"``) the model sees only the brain and labels stay inside it."""
        parameters = (parameters or SegmentationParameters()).validate()
        if inputVolumeNode is None:
            raise InputError("input", "no input volume selected")
        report = self.reporter(progress, cancel)
        self.messages = []
        report(0.0, f"loading model {parameters.model}")
        model = self.loadModel(parameters)
        image = mrml.imageFromVolumeNode(inputVolumeNode)
        brainMask = self.brainMaskImage(inputVolumeNode, image, parameters, brainMaskNode, report.sub(0.0, 0.25),
                                        model)
        start = 0.02 if brainMask is None else 0.25
        if brainMask is not None:
            image = brain.masked_image(image, brainMask)
        result = segment_image(image, model.network, model.config, parameters,
                               report.sub(start, 0.95), subject=mrml.subjectOf(inputVolumeNode))
        del image  # the input copy is not needed any more: large volumes are the memory limit
        if brainMask is not None:
            result.labels = brain.labels_inside(result.labels, brainMask)
        result.messages = self.messages + result.messages
        report.cancel.raise_if_cancelled()
        record = self.provenance("segment", parameters, [inputVolumeNode], modelSha256=model.sha256)
        record["model"] = model.name
        name = (outputSegmentationNode.GetName() if outputSegmentationNode is not None
                else f"{inputVolumeNode.GetName()}_segmentation")
        segmentationNode = mrml.segmentationNodeFromLabelmap(result.labels, self.scene, name=name,
                                                             segments=segmentSpecsForModel(model),
                                                             provenance=record)
        if outputSegmentationNode is not None:
            # replace the content of the node the user chose, keeping its identity
            outputSegmentationNode.GetSegmentation().DeepCopy(segmentationNode.GetSegmentation())
            mrml.setProvenance(outputSegmentationNode, record)
            self.scene.RemoveNode(segmentationNode)
            segmentationNode = outputSegmentationNode
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolumeNode)
        probabilityNode = None
        if result.probabilities is not None:
            probabilityNode = mrml.volumeNodeFromImage(result.probabilities, self.scene,
                                                       name=f"{inputVolumeNode.GetName()}_probabilities",
                                                       provenance=record)
        report(1.0, "segmentation done")
        return SegmentationOutputs(segmentationNode, probabilityNode, model.name, model.sha256, result.device,
                                   result.seconds, result.messages)
