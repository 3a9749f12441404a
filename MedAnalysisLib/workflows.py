"""File-to-file workflows shared by the command line and the batch steps.

``medanalysis segment`` and the batch ``segment`` step (and so on for brain extraction,
enhancement and registration) call the same function here: load the inputs into a scene, run
the operation's logic once, write the outputs and their provenance sidecars. A step's behaviour
cannot drift between the two, and provenance sidecars are written in one place
(:func:`writeImage`, :func:`writeSegmentation`).

Each workflow takes the operation's parameter object (declared once, see ``core/parameters``)
and returns a plain dict (outputs, metrics, timings) that the CLI prints and batch records.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from . import mrml
from .core.errors import InputError
from .core.progress import ProgressCallback, atomic_output, output_suffix


# --- outputs and provenance: the one place ------------------------------------------------------

def writeImage(image, path, record: Optional[dict]) -> str:
    """An image file with its ``.provenance.json`` sidecar."""
    from .core.imageio import write_image

    return str(write_image(image, path, provenance=record))


def writeSegmentation(segmentationNode, path, referenceImage, record: Optional[dict]) -> str:
    """``.seg.nrrd`` (segments, names, terminology) or a labelmap on ``referenceImage``'s grid,
    with its provenance sidecar (which lists the segments, so a labelmap keeps its names)."""
    from .core.provenance import sidecar_path

    record = dict(record or {})
    record["segments"] = [spec.to_dict() for spec in mrml.segmentSpecs(segmentationNode)]
    if output_suffix(path) == ".seg.nrrd":
        mrml.saveSegmentation(segmentationNode, path)
        with atomic_output(sidecar_path(path)) as tmp:
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        return str(path)
    labels = mrml.labelmapFromSegmentationNode(segmentationNode, referenceImage=referenceImage)
    return writeImage(labels, path, record)


def checkImageOutputs(*paths, segmentation: bool = True) -> None:
    """Refuse output names with an extension no image writer takes, before any work."""
    from .core.imageio import IMAGE_SUFFIXES

    for path in paths:
        if path and (output_suffix(path) not in IMAGE_SUFFIXES or
                     (not segmentation and output_suffix(path) == ".seg.nrrd")):
            raise InputError(path, f"unsupported output extension '{output_suffix(path)}'")


def _loadMask(path, scene, name: str):
    if not path:
        return None
    if output_suffix(path) == ".seg.nrrd":
        return mrml.loadSegmentation(path, scene, name=name)
    return mrml.loadVolumeNode(path, scene, name=name, labelmap=True)


# --- workflows ------------------------------------------------------------------------------------

def segmentFile(inputPath, outputPath, parameters, brainMaskPath=None, probabilitiesDir=None, logic=None,
                progress: Optional[ProgressCallback] = None) -> dict:
    """``segment``: one volume file -> a segmentation file (+ probability maps), volumes per segment."""
    import numpy as np

    from .core import geometry
    from .core.imageio import check_output_paths
    from .logic.segmentationlogic import SegmentationLogic

    checkImageOutputs(outputPath)
    check_output_paths([inputPath, brainMaskPath], [outputPath], folder_outputs=[probabilitiesDir])
    if probabilitiesDir and Path(probabilitiesDir).exists() and not Path(probabilitiesDir).is_dir():
        raise InputError(probabilitiesDir, "probabilities must name a folder, not an existing file")
    parameters.validate()
    started = time.perf_counter()
    logic = logic or SegmentationLogic(mrml.newScene())
    scene = logic.scene
    inputNode = mrml.loadVolumeNode(inputPath, scene, name=Path(inputPath).name.split(".")[0])
    maskNode = _loadMask(brainMaskPath, scene, "brain_mask")
    outputs = logic.segment(inputNode, parameters, progress=progress, brainMaskNode=maskNode)
    record = mrml.getProvenance(outputs.segmentationNode)
    inputImage = mrml.imageFromVolumeNode(inputNode)
    written = {"segmentation": writeSegmentation(outputs.segmentationNode, outputPath, inputImage, record)}
    specs = mrml.segmentSpecs(outputs.segmentationNode)
    if outputs.probabilityNode is not None and probabilitiesDir:
        probabilities = mrml.imageFromVolumeNode(outputs.probabilityNode)
        names = ["background"] + [s.name for s in specs]
        for index in range(probabilities.GetNumberOfComponentsPerPixel()):
            name = names[index] if index < len(names) else f"class_{index}"
            path = Path(probabilitiesDir) / f"probability_{index}_{name.lower().replace(' ', '_')}.nii.gz"
            written[f"probability_{index}"] = writeImage(geometry.image_from_array(
                geometry.array_view(probabilities)[..., index].copy(), reference=probabilities), path, None)
    labels = mrml.labelmapFromSegmentationNode(outputs.segmentationNode, referenceImage=inputImage)
    counts = np.bincount(geometry.array_view(labels).ravel().astype(np.int64))
    voxelMl = float(np.prod(labels.GetSpacing())) / 1000.0
    return {"operation": "segment", "input": os.fspath(inputPath), "model": outputs.modelName,
            "model_sha256": outputs.modelSha256, "device": outputs.device,
            "segments": [{"label": s.label, "name": s.name,
                          "volume_ml": round((int(counts[s.label]) if s.label < counts.size else 0) * voxelMl, 3)}
                         for s in specs],
            "outputs": written, "messages": outputs.messages,
            "seconds": {**outputs.seconds, "total": round(time.perf_counter() - started, 3)}}


def brainMaskFile(inputPath, outputPath, parameters, maskedOutputPath=None, logic=None,
                  progress: Optional[ProgressCallback] = None) -> dict:
    """``brain-mask``: one volume file -> a 0/1 mask file (or ``.seg.nrrd``) and the brain volume."""
    from .core.imageio import check_input_file, check_output_paths
    from .logic.brainlogic import BrainExtractionLogic

    checkImageOutputs(outputPath, maskedOutputPath)
    check_input_file(inputPath)
    check_output_paths([inputPath], [p for p in (outputPath, maskedOutputPath) if p])
    parameters.maskedVolume = bool(maskedOutputPath)
    parameters.validate()
    started = time.perf_counter()
    logic = logic or BrainExtractionLogic(mrml.newScene())
    nodeName = Path(inputPath).name.split(".")[0]
    try:
        inputNode = mrml.loadVolumeNode(inputPath, logic.scene, name=nodeName)
        result = logic.extractBrain(inputNode, parameters, progress=progress)
    except InputError as error:
        if error.subject != nodeName:
            raise
        raise InputError(inputPath, error.problem) from None  # name the file, not the scene node
    record = mrml.getProvenance(result.segmentationNode)
    inputImage = mrml.imageFromVolumeNode(inputNode)
    if output_suffix(outputPath) == ".seg.nrrd":
        written = {"mask": writeSegmentation(result.segmentationNode, outputPath, inputImage, record)}
    else:
        written = {"mask": writeImage(BrainExtractionLogic.maskImage(result.segmentationNode, inputImage),
                                      outputPath, record)}
    if result.maskedVolumeNode is not None:
        written["masked"] = writeImage(mrml.imageFromVolumeNode(result.maskedVolumeNode), maskedOutputPath, record)
    return {"operation": "brain-mask", "input": os.fspath(inputPath), "brain_volume_ml": round(result.volumeMl, 2),
            "device": result.device, "outputs": written,
            "seconds": {**result.seconds, "total": round(time.perf_counter() - started, 3)}}


def enhanceFile(inputPath, outputPath, parameters, maskPath=None, referencePath=None, biasFieldPath=None,
                progress: Optional[ProgressCallback] = None) -> dict:
    """``enhance``: one volume file -> the enhanced volume file (+ the bias field)."""
    from .core.imageio import check_output_paths
    from .logic.enhancementlogic import EnhancementLogic

    checkImageOutputs(outputPath, biasFieldPath)
    effective = parameters.with_preset()
    effective.validate()
    check_output_paths([inputPath, maskPath, referencePath], [outputPath, biasFieldPath])
    if biasFieldPath and not effective.bias_correct:
        raise InputError("bias field output", "no bias field without bias correction: add --bias-correct")
    started = time.perf_counter()
    scene = mrml.newScene()
    inputNode = mrml.loadVolumeNode(inputPath, scene, name="input")
    maskNode = _loadMask(maskPath, scene, "mask")
    referenceNode = mrml.loadVolumeNode(referencePath, scene, name="reference") if referencePath else None
    outputs = EnhancementLogic(scene).enhance(inputNode, parameters, maskNode=maskNode,
                                              referenceVolumeNode=referenceNode,
                                              biasFieldOutput=bool(biasFieldPath), progress=progress)
    record = mrml.getProvenance(outputs.outputVolumeNode)
    written = {"output": writeImage(mrml.imageFromVolumeNode(outputs.outputVolumeNode), outputPath, record)}
    if biasFieldPath:
        if outputs.biasFieldNode is None:
            raise InputError("bias field output", "no bias field: add --bias-correct")
        written["bias_field"] = writeImage(mrml.imageFromVolumeNode(outputs.biasFieldNode), biasFieldPath, record)
    return {"operation": "enhance", "input": os.fspath(inputPath), "outputs": written, "steps": outputs.steps,
            "seconds": {**outputs.seconds, "total": round(time.perf_counter() - started, 3)},
            "parameters": record["parameters"]}


def registerFiles(fixedPath, movingPath, outputPath, parameters, transformPath=None, fixedMaskPath=None,
                  movingMaskPath=None, progress: Optional[ProgressCallback] = None) -> dict:
    """``register``: MOVING onto FIXED -> the resampled moving file and the transform file.

    ``transformPath`` ending in ``.auto`` becomes ``.tfm`` for a linear result, ``.h5`` otherwise.
    """
    from .core.imageio import check_output_paths
    from .core.register import check_file_dimensions, check_transform_path, resolve_stages, write_transform
    from .logic.registrationlogic import RegistrationLogic

    checkImageOutputs(outputPath, segmentation=False)
    autoSuffix = bool(transformPath) and str(transformPath).endswith(".auto")
    if transformPath and not autoSuffix:
        check_transform_path(transformPath)
    initFile = parameters.init if parameters.init not in ("geometry", "moments", "identity") else None
    check_output_paths([fixedPath, movingPath, fixedMaskPath, movingMaskPath, initFile],
                       [outputPath, None if autoSuffix else transformPath])
    resolve_stages(parameters)  # a bad preset or metric fails before any image is read
    check_file_dimensions(fixedPath, movingPath)  # volume nodes would turn a 2-D image into one slice
    started = time.perf_counter()
    scene = mrml.newScene()
    fixedNode = mrml.loadVolumeNode(fixedPath, scene, name="fixed")
    movingNode = mrml.loadVolumeNode(movingPath, scene, name="moving")
    fixedMaskNode = _loadMask(fixedMaskPath, scene, "fixed_mask")
    movingMaskNode = _loadMask(movingMaskPath, scene, "moving_mask")
    for node, path in ((fixedNode, fixedPath), (movingNode, movingPath), (fixedMaskNode, fixedMaskPath),
                       (movingMaskNode, movingMaskPath)):
        if node is not None:
            node.SetName(str(path))  # error messages name the files, not the node names
    outputs = RegistrationLogic(scene).register(fixedNode, movingNode, parameters, fixedMaskNode=fixedMaskNode,
                                                movingMaskNode=movingMaskNode, progress=progress)
    record = mrml.getProvenance(outputs.transformNode)
    written = {"resampled": writeImage(mrml.imageFromVolumeNode(outputs.resampledVolumeNode), outputPath, record)}
    if transformPath:
        transform = mrml.sitkTransformFromNode(outputs.transformNode)
        if autoSuffix:
            from .core import geometry

            transformPath = str(transformPath)[:-len(".auto")] + (".tfm" if geometry.is_linear(transform) else ".h5")
        written["transform"] = str(write_transform(transform, transformPath, provenance=record))
    return {"operation": "register", "fixed": os.fspath(fixedPath), "moving": os.fspath(movingPath),
            "preset": parameters.preset, "metric": outputs.qa["metric"], "init": parameters.init,
            "outputs": written, "qa": outputs.qa, "seconds": round(time.perf_counter() - started, 3)}


def monitorFiles(baselinePath, followupPath, reportDir, parameters, baselineSegPath=None, followupSegPath=None,
                 transformPath=None, progress: Optional[ProgressCallback] = None) -> dict:
    """``monitor``: baseline and follow-up volume files (and optionally their segmentations and a
    registration transform) -> the report folder; the result as ``monitor --json`` prints it."""
    from .core.imageio import check_output_paths
    from .core.register import read_transform
    from .logic.monitoringlogic import MonitoringLogic

    parameters.validate()
    check_output_paths([baselinePath, followupPath, baselineSegPath, followupSegPath, transformPath], [],
                       folder_outputs=[reportDir])
    started = time.perf_counter()
    scene = mrml.newScene()
    try:
        baseline = mrml.loadVolumeNode(baselinePath, scene, name="baseline")
        followup = mrml.loadVolumeNode(followupPath, scene, name="followup")
        segmentations = [mrml.loadSegmentationOrMask(path, scene, parameters.lesionSegmentName) if path else None
                         for path in (baselineSegPath, followupSegPath)]
        transform = read_transform(transformPath) if transformPath else None
        outputs = MonitoringLogic(scene).monitor(baseline, followup, parameters, *segmentations, reportDir=reportDir,
                                                 registrationTransform=transform, progress=progress)
    finally:
        scene.Clear(1)
    return {**outputs.result, "report": str(outputs.reportPath),
            "seconds": {**outputs.seconds, "total": round(time.perf_counter() - started, 3)}}


__all__ = ["writeImage", "writeSegmentation", "checkImageOutputs", "segmentFile", "brainMaskFile", "enhanceFile",
           "registerFiles", "monitorFiles"]
