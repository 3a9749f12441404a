"""Pipeline steps of a batch: the step adapters (each runs the same logic as its CLI command on
its own headless scene), the :data:`STEPS` registry and :data:`STEP_ORDER`."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Callable, Sequence

from ..core.enhance import EnhancementParameters
from ..core.errors import InputError
from ..core.longitudinal import MonitoringParameters
from ..core.brain_parameters import BrainExtractionParameters
from ..core.registration_parameters import RegistrationParameters
from ..core.segment.parameters import SegmentationParameters
from ..core.parameters import batch_columns, from_row
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
    from ..workflows import enhanceFile

    parameters = enhancementParameters(params)
    outputs = {}
    for artifact, prefix in _images(inputs):
        result = enhanceFile(inputs[artifact], outDir / f"{prefix}enhanced.nii.gz", parameters)
        outputs[artifact] = result["outputs"]["output"]
    return {"outputs": outputs, "metrics": {}}


def _reusedLogic(logicClass):
    """One logic object for the baseline and the follow-up (a loaded network is loaded once),
    each image in a fresh scene cleared afterwards."""
    from .. import mrml

    logic = logicClass(mrml.newScene())

    def each():
        scene = mrml.newScene()
        logic.scene = scene
        return scene

    return logic, each


def segmentStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis segment``: model segmentation -> ``segmentation.seg.nrrd`` and volumes (ml)."""
    from ..logic.segmentationlogic import SegmentationLogic
    from ..workflows import segmentFile

    # trusted: only from the operator (batch --set trusted=1; the manifest refuses the column)
    parameters = from_row(SegmentationParameters, params, trusted=parseFlag(params.get("trusted"), "trusted"),
                          threads=workerThreads()).validate()
    logic, fresh = _reusedLogic(SegmentationLogic)
    outputs, metrics = {}, {}
    for artifact, prefix in _images(inputs):
        scene = fresh()
        try:  # the brain mask from the brain-mask step, when it ran
            result = segmentFile(inputs[artifact], outDir / f"{prefix}segmentation.seg.nrrd", parameters,
                                 brainMaskPath=inputs.get(f"{prefix}brain_mask"), logic=logic)
        finally:
            scene.Clear(1)
        for segment in result["segments"]:
            key = re.sub(r"[^a-z0-9]+", "_", segment["name"].lower()).strip("_")
            metrics[f"{prefix}{key}_ml"] = segment["volume_ml"]
        metrics["segment_device"] = result["device"]
        outputs[f"{prefix}segmentation"] = result["outputs"]["segmentation"]
    return {"outputs": outputs, "metrics": metrics}


def brainMaskStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis brain-mask``: deepbet brain extraction -> ``brain_mask.nii.gz`` (used by the
    register and segment steps that follow) and the brain volume (mL)."""
    from ..logic.brainlogic import BrainExtractionLogic
    from ..workflows import brainMaskFile

    parameters = from_row(BrainExtractionParameters, params).validate()
    logic, fresh = _reusedLogic(BrainExtractionLogic)
    outputs, metrics = {}, {}
    for artifact, prefix in _images(inputs):
        scene = fresh()
        try:
            result = brainMaskFile(inputs[artifact], outDir / f"{prefix}brain_mask.nii.gz", parameters, logic=logic)
        finally:
            scene.Clear(1)
        outputs[f"{prefix}brain_mask"] = result["outputs"]["mask"]
        metrics[f"{prefix}brain_volume_ml"] = result["brain_volume_ml"]
    return {"outputs": outputs, "metrics": metrics}


def registerStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis register``: follow-up (moving) to baseline (fixed) -> transform + resampled follow-up."""
    from ..workflows import registerFiles

    if "followup" not in inputs:
        raise InputError(case.input, "the register step needs a 'followup' column")
    parameters = from_row(RegistrationParameters, params, threads=workerThreads())
    result = registerFiles(inputs["image"], inputs["followup"], outDir / "followup_registered.nii.gz", parameters,
                           transformPath=outDir / "followup_to_baseline.auto",  # .tfm when linear, else .h5
                           fixedMaskPath=inputs.get("brain_mask"), movingMaskPath=inputs.get("followup_brain_mask"))
    return {"outputs": {"transform": result["outputs"]["transform"],
                        "followup_registered": result["outputs"]["resampled"]},
            "metrics": {"registration_final_metric": result["qa"]["final_metric"],
                        "registration_seconds": result["qa"]["seconds"]}}


def monitorStep(case: CaseSpec, inputs: dict, params: dict, outDir: Path) -> dict:
    """``medanalysis monitor``: lesion change baseline -> follow-up, report folder ``report/``."""
    from ..workflows import monitorFiles

    if "followup" not in inputs:
        raise InputError(case.input, "the monitor step needs a 'followup' column")
    parameters = from_row(MonitoringParameters, params).validate()
    result = monitorFiles(inputs["image"], inputs["followup"], outDir / "report", parameters,
                          inputs.get("segmentation"), inputs.get("followup_segmentation"), inputs.get("transform"))
    summary = result["summary"]
    return {"outputs": {"report": str(outDir / "report")},
            "metrics": {"lesions_baseline": summary["lesions_baseline"], "lesions_followup": summary["lesions_followup"],
                        "burden_change_ml": summary["burden_change_ml"],
                        **{f"lesions_{status}": count for status, count in summary["counts"].items()}}}


STEPS: dict[str, BatchStep] = {
    "import": BatchStep(importStep, columns=("series", "followup_series", "anonymize")),
    "enhance": BatchStep(enhanceStep, columns=batch_columns(EnhancementParameters), defaults={"preset": "mri-brain-t1"}),
    "segment": BatchStep(segmentStep, columns=(*batch_columns(SegmentationParameters), "trusted"),
                         defaults={"model": "brain-tissue-lesion"}, usesGpu=True, hashedColumns={"model": modelSha256}),
    "brain-mask": BatchStep(brainMaskStep, columns=batch_columns(BrainExtractionParameters), usesGpu=True),
    "register": BatchStep(registerStep, columns=batch_columns(RegistrationParameters),
                          defaults={"registration_preset": "rigid"}),
    "monitor": BatchStep(monitorStep, columns=batch_columns(MonitoringParameters),
                         defaults={"model": "brain-tissue-lesion", "registration_preset": "rigid"}, usesGpu=True,
                         hashedColumns={"model": modelSha256}),
}
"""Pipeline steps by name, run in the order given by ``--steps``."""
