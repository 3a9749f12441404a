"""SegmentationLogic: deep-learning segmentation of a volume node into a segmentation node."""

from __future__ import annotations

import dataclasses
from typing import Optional

from .. import mrml, resources
from ..core.errors import InputError
from ..core.labels import BRAIN_TISSUE_SEGMENTS, SegmentSpec
from ..core.progress import CancelToken, ProgressCallback
from ..core.segment.engine import InferenceSettings, segment_image
from ..core.segment.models import LoadedModel, load_model
from .base import LogicBase

DEFAULT_MODEL = "brain-tissue-lesion"


@dataclasses.dataclass
class SegmentationParameters:
    """What to run and how (shared by panel, logic, CLI and batch)."""

    model: str = DEFAULT_MODEL       # catalog name or path (safetensors/.pt + JSON, TorchScript, bundle)
    device: str = "auto"
    tta: bool = False
    trusted: bool = False            # allow TorchScript / MONAI bundle configs (they can run code)
    threads: Optional[int] = None
    lesionMinMl: float = 0.02
    lesionThreshold: Optional[float] = None  # lesion probability needed; None: the model's default, else argmax
    probabilities: bool = False

    def inferenceSettings(self) -> InferenceSettings:
        return InferenceSettings(device=self.device, tta=self.tta, threads=self.threads,
                                 lesion_min_ml=self.lesionMinMl, lesion_threshold=self.lesionThreshold,
                                 return_probabilities=self.probabilities)


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

    def loadModel(self, parameters: SegmentationParameters) -> LoadedModel:
        key = (parameters.model, parameters.trusted)
        if key not in self._cache:
            self._cache = {key: load_model(parameters.model, resources.modelsDir(), trusted=parameters.trusted)}
        return self._cache[key]

    def segment(self, inputVolumeNode, parameters: Optional[SegmentationParameters] = None,
                outputSegmentationNode=None, progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None) -> SegmentationOutputs:
        parameters = parameters or SegmentationParameters()
        if inputVolumeNode is None:
            raise InputError("input", "no input volume selected")
        report = self.reporter(progress, cancel)
        report(0.0, f"loading model {parameters.model}")
        model = self.loadModel(parameters)
        image = mrml.imageFromVolumeNode(inputVolumeNode)
        result = segment_image(image, model.network, model.config, parameters.inferenceSettings(),
                               report.sub(0.02, 0.95), subject=inputVolumeNode.GetName())
        del image  # the input copy is not needed any more: large volumes are the memory limit
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
