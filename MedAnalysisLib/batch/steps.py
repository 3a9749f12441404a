"""Pipeline steps of a batch: the step adapters (each runs the same logic as its CLI command on
its own headless scene), the :data:`STEPS` registry and :data:`STEP_ORDER`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

from ..core.enhance import EnhancementParameters
from ..core.errors import InputError
from ..core.longitudinal import MonitoringParameters
from ..core.registration_parameters import RegistrationParameters
from ..core.segment.parameters import SegmentationParameters
from ..core.parameters import batch_columns, from_row
from ..core.progress import atomic_output
from .fingerprint import modelSha256
from .manifest import CaseSpec, parseFlag

STEP_ORDER = ("import", "enhance", "brain-mask", "register", "segment", "monitor")

StepFunction = Callable[["CaseSpec", dict, dict, Path], dict]


@dataclasses.dataclass(frozen=True)
class BatchStep:
    """A pipeline step the batch can run.

    Attributes:
        function: ``function(case, inputs, params, outDir) -> {"outputs", "metrics"}``; ``inputs``
            maps artifact names ("image", "followup", "segmentation"...) to files, ``params`` is the
            case's parameters (strings), files go into ``outDir``; ``outputs`` replace or add
            artifacts for the following steps. Raise InputError for bad input.
        columns: manifest parameter columns the step reads.
        defaults: default values of some of these columns.
        usesGpu: ask for a ``GPU`` resource when some worker offers one.
        hashedColumns: column -> function(value) giving the SHA-256 of what the value names
            (a model), part of the case fingerprint.
    """

    function: StepFunction
    columns: tuple = ()
    defaults: dict = dataclasses.field(default_factory=dict)
    usesGpu: bool = False
    hashedColumns: dict = dataclasses.field(default_factory=dict)


def resolveSteps(names: "Sequence[str] | str | None", registry: dict) -> list[str]:
    """Validated step list (default: every available step in pipeline order)."""
    if names is None or names == "":
        return [name for name in STEP_ORDER if name in registry]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    steps = []
    for name in names:
        if name not in registry:
            where = "is not available in this installation" if name in STEP_ORDER else "is unknown"
            raise InputError("--steps", f"step '{name}' {where} (available: {', '.join(registry)})")
        if name in steps:
            raise InputError("--steps", f"step '{name}' is listed twice")
        steps.append(name)
    if not steps:
        raise InputError("--steps", "no step given")
    return steps


def workerThreads() -> int:
    """Library threads (torch, ITK) one step may use on this worker (1 unless configured)."""
    try:
        return max(1, int(os.environ.get("MEDANALYSIS_THREADS", "1")))
    except ValueError:
        return 1


# --- pipeline steps -----------------------------------------------------------------------------

def _images(inputs: dict) -> list[tuple[str, str]]:
    """(artifact, file prefix) of the baseline and, when present, the follow-up."""
    return [(artifact, prefix) for artifact, prefix in (("image", ""), ("followup", "followup_")) if artifact in inputs]


def _eachImage(inputs: dict, logicClass):
    """(file prefix, logic, input volume node) for the baseline and the follow-up, each in a fresh
    scene cleared afterwards; one logic object serves both, so a loaded network is loaded once."""
    from .. import mrml

    logic = None
    for artifact, prefix in _images(inputs):
        scene = mrml.newScene()
        try:
            if logic is None:
                logic = logicClass(scene)
            logic.scene = scene
            yield prefix, logic, mrml.loadVolumeNode(inputs[artifact], scene, name=artifact)
        finally:
            scene.Clear(1)


def importStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis import``: DICOM folder / ZIP / DICOMDIR or image file -> ``image.nii.gz``."""
    from ..core.dicom_import import ImportParameters, import_to_files

    outputs = {}
    for artifact, prefix in _images(inputs):
        parameters = ImportParameters(series_uid=params.get(f"{prefix}series", ""),
                                      anonymize=parseFlag(params.get("anonymize"), "anonymize"))
        result = import_to_files(inputs[artifact], outDir / f"{prefix}image.nii.gz", parameters)
        if len(result["outputs"]) != 1:
            raise InputError(inputs[artifact], f"{len(result['outputs'])} volumes found: add a '{prefix}series' "
                                               "column naming the one to use")
        outputs[artifact] = result["outputs"][0]["file"]
    return {"outputs": outputs, "metrics": {}}


def enhancementParameters(params: dict):
    """EnhancementParameters from manifest cells (preset first, explicit cells override it)."""
    parameters = from_row(EnhancementParameters, params)
    parameters.with_preset().validate()
    return parameters


def enhanceStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis enhance``: the enhancement pipeline -> ``enhanced.nii.gz``."""
    from .. import mrml
    from ..core.imageio import write_image
    from ..logic.enhancementlogic import EnhancementLogic

    parameters = enhancementParameters(params)
    outputs = {}
    for artifact, prefix in _images(inputs):
        scene = mrml.newScene()
        try:
            inputNode = mrml.loadVolumeNode(inputs[artifact], scene, name=artifact)
            result = EnhancementLogic(scene).enhance(inputNode, parameters)
            record = mrml.getProvenance(result.outputVolumeNode)
            path = write_image(mrml.imageFromVolumeNode(result.outputVolumeNode), outDir / f"{prefix}enhanced.nii.gz",
                               provenance=record)
        finally:
            scene.Clear(1)
        outputs[artifact] = str(path)
    return {"outputs": outputs, "metrics": {}}


def segmentStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis segment``: model segmentation -> ``segmentation.seg.nrrd`` and volumes (ml)."""
    import numpy as np

    from .. import mrml
    from ..core import geometry
    from ..core.provenance import sidecar_path
    from ..logic.segmentationlogic import SegmentationLogic, SegmentationParameters

    # trusted: only from the operator (batch --set trusted=1; the manifest refuses the column)
    parameters = from_row(SegmentationParameters, params, trusted=parseFlag(params.get("trusted"), "trusted"),
                          threads=workerThreads()).validate()
    outputs, metrics = {}, {}
    for prefix, logic, inputNode in _eachImage(inputs, SegmentationLogic):
        maskFile = inputs.get(f"{prefix}brain_mask")  # from the brain-mask step, when it ran
        maskNode = mrml.loadVolumeNode(maskFile, logic.scene, name="brain", labelmap=True) if maskFile else None
        result = logic.segment(inputNode, parameters, brainMaskNode=maskNode)
        path = outDir / f"{prefix}segmentation.seg.nrrd"
        mrml.saveSegmentation(result.segmentationNode, path)
        record = mrml.getProvenance(result.segmentationNode)
        with atomic_output(sidecar_path(path)) as tmp:
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        labels = mrml.labelmapFromSegmentationNode(result.segmentationNode,
                                                   referenceImage=mrml.imageFromVolumeNode(inputNode))
        counts = np.bincount(geometry.array_view(labels).ravel().astype(np.int64))
        voxelMl = float(np.prod(labels.GetSpacing())) / 1000.0
        for spec in mrml.segmentSpecs(result.segmentationNode):
            key = re.sub(r"[^a-z0-9]+", "_", spec.name.lower()).strip("_")
            count = int(counts[spec.label]) if spec.label < counts.size else 0
            metrics[f"{prefix}{key}_ml"] = round(count * voxelMl, 3)
        metrics["segment_device"] = result.device
        outputs[f"{prefix}segmentation"] = str(path)
    return {"outputs": outputs, "metrics": metrics}


def brainMaskStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis brain-mask``: deepbet brain extraction -> ``brain_mask.nii.gz`` (used by the
    register and segment steps that follow) and the brain volume (mL)."""
    from .. import mrml
    from ..core.imageio import write_image
    from ..logic.brainlogic import BrainExtractionLogic, BrainExtractionParameters

    parameters = BrainExtractionParameters(device=params.get("device") or "auto").validate()
    outputs, metrics = {}, {}
    for prefix, logic, inputNode in _eachImage(inputs, BrainExtractionLogic):
        result = logic.extractBrain(inputNode, parameters)
        mask = BrainExtractionLogic.maskImage(result.segmentationNode, mrml.imageFromVolumeNode(inputNode))
        path = write_image(mask, outDir / f"{prefix}brain_mask.nii.gz",
                           provenance=mrml.getProvenance(result.segmentationNode))
        outputs[f"{prefix}brain_mask"] = str(path)
        metrics[f"{prefix}brain_volume_ml"] = round(result.volumeMl, 2)
    return {"outputs": outputs, "metrics": metrics}


def registerStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis register``: follow-up (moving) to baseline (fixed) -> transform + resampled follow-up."""
    from ..core.imageio import read_image, write_image
    from ..core.provenance import checksums_of, make_provenance
    from ..core.register import register_images, resample_moving, write_transform

    if "followup" not in inputs:
        raise InputError(case.input, "the register step needs a 'followup' column")
    parameters = from_row(RegistrationParameters, params, threads=workerThreads())
    fixed, moving = read_image(inputs["image"]), read_image(inputs["followup"])
    masks = [read_image(inputs[key]) if key in inputs else None for key in ("brain_mask", "followup_brain_mask")]
    result = register_images(fixed, moving, parameters, fixed_mask=masks[0], moving_mask=masks[1],
                             subjects={"fixed": inputs["image"], "moving": inputs["followup"]})
    record = make_provenance("register", parameters, checksums_of([inputs["image"], inputs["followup"]]))
    transformPath = write_transform(result.transform, outDir / ("followup_to_baseline.tfm" if result.is_linear
                                                                 else "followup_to_baseline.h5"), provenance=record)
    resampled = write_image(resample_moving(moving, fixed, result.transform), outDir / "followup_registered.nii.gz",
                            provenance=record)
    summary = result.summary()
    return {"outputs": {"transform": str(transformPath), "followup_registered": str(resampled)},
            "metrics": {"registration_final_metric": summary["final_metric"],
                        "registration_seconds": summary["seconds"]}}


def monitorStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis monitor``: lesion change baseline -> follow-up, report folder ``report/``."""
    from .. import mrml
    from ..core.register import read_transform
    from ..logic.monitoringlogic import MonitoringLogic

    if "followup" not in inputs:
        raise InputError(case.input, "the monitor step needs a 'followup' column")
    parameters = from_row(MonitoringParameters, params).validate()
    scene = mrml.newScene()
    try:
        baseline = mrml.loadVolumeNode(inputs["image"], scene, name="baseline")
        followup = mrml.loadVolumeNode(inputs["followup"], scene, name="followup")
        segmentations = [mrml.loadSegmentationOrMask(inputs[key], scene, parameters.lesionSegmentName)
                         if key in inputs else None for key in ("segmentation", "followup_segmentation")]
        transform = read_transform(inputs["transform"]) if "transform" in inputs else None
        outputs = MonitoringLogic(scene).monitor(baseline, followup, parameters, *segmentations,
                                                 reportDir=outDir / "report", registrationTransform=transform)
    finally:
        scene.Clear(1)
    summary = outputs.result["summary"]
    return {"outputs": {"report": str(outDir / "report")},
            "metrics": {"lesions_baseline": summary["lesions_baseline"], "lesions_followup": summary["lesions_followup"],
                        "burden_change_ml": summary["burden_change_ml"],
                        **{f"lesions_{status}": count for status, count in summary["counts"].items()}}}


STEPS: dict[str, BatchStep] = {
    "import": BatchStep(importStep, columns=("series", "followup_series", "anonymize")),
    "enhance": BatchStep(enhanceStep, columns=batch_columns(EnhancementParameters), defaults={"preset": "mri-brain-t1"}),
    "segment": BatchStep(segmentStep, columns=(*batch_columns(SegmentationParameters), "trusted"),
                         defaults={"model": "brain-tissue-lesion"}, usesGpu=True, hashedColumns={"model": modelSha256}),
    "brain-mask": BatchStep(brainMaskStep, columns=("device",), usesGpu=True),
    "register": BatchStep(registerStep, columns=batch_columns(RegistrationParameters),
                          defaults={"registration_preset": "rigid"}),
    "monitor": BatchStep(monitorStep, columns=batch_columns(MonitoringParameters),
                         defaults={"model": "brain-tissue-lesion", "registration_preset": "rigid"}, usesGpu=True,
                         hashedColumns={"model": modelSha256}),
}
"""Pipeline steps by name, run in the order given by ``--steps``."""
