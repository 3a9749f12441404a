"""``medanalysis demo``: the main job on the bundled sample pair, offline.

import -> enhance (tissue-aware bias-field correction) -> register (follow-up to baseline)
-> segment (default model) -> detect lesions -> monitor change -> HTML report.
The bundled pair is synthetic (MNI ICBM152 template with known lesion changes), so the demo
also compares its findings with the ground truth stored beside it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from . import mrml, resources
from .core.enhance import EnhancementParameters
from .core.progress import CancelToken, ProgressCallback, ProgressReporter
from .logic.enhancementlogic import EnhancementLogic
from .logic.importlogic import ImportLogic
from .logic.monitoringlogic import MonitoringLogic, MonitoringParameters


def compareWithTruth(result: dict, truth: list, toleranceMm: float = 6.0) -> dict:
    """How many ground-truth lesions were found with the right status (nearest centroid)."""
    predicted = list(result["lesions"])
    correct, found = 0, 0
    for lesion in truth:
        if not predicted:
            break
        distances = [np.linalg.norm(np.subtract(p["centroid_ras"], lesion["centroid_ras"])) for p in predicted]
        index = int(np.argmin(distances))
        if distances[index] <= toleranceMm:
            found += 1
            correct += predicted.pop(index)["status"] == lesion["status"]
    return {"truth_lesions": len(truth), "found": found, "status_correct": correct,
            "extra_detections": len(predicted)}


def runDemo(outputDir: "str | Path", scene=None, progress: Optional[ProgressCallback] = None,
            cancel: Optional[CancelToken] = None, device: str = "auto") -> dict:
    started = time.perf_counter()
    report = ProgressReporter(progress, cancel)
    scene = scene if scene is not None else mrml.newScene()
    outputDir = Path(outputDir)
    seconds = {}

    tic = time.perf_counter()
    report(0.0, "importing the sample study pair")
    importLogic = ImportLogic(scene)
    baseline = importLogic.load(resources.samplePath("study_baseline_t1.nii.gz"), progress=report.sub(0.0, 0.03))[0]
    followup = importLogic.load(resources.samplePath("study_followup_t1.nii.gz"), progress=report.sub(0.03, 0.06))[0]
    baseline.SetName("baseline")
    followup.SetName("followup")
    seconds["import"] = round(time.perf_counter() - tic, 2)

    tic = time.perf_counter()
    enhancement = EnhancementParameters(bias_correct=True, bias_method="tissue")
    enhanceLogic = EnhancementLogic(scene)
    baselineEnhanced = enhanceLogic.enhance(baseline, enhancement, progress=report.sub(0.06, 0.15)).outputVolumeNode
    followupEnhanced = enhanceLogic.enhance(followup, enhancement, progress=report.sub(0.15, 0.25)).outputVolumeNode
    seconds["enhance"] = round(time.perf_counter() - tic, 2)

    outputs = MonitoringLogic(scene).monitor(baselineEnhanced, followupEnhanced, MonitoringParameters(device=device),
                                             reportDir=outputDir / "report", progress=report.sub(0.25, 0.95))
    seconds.update(outputs.seconds)

    report(0.96, "saving segmentations")
    mrml.saveSegmentation(outputs.baselineSegmentationNode, outputDir / "baseline.seg.nrrd")
    mrml.saveSegmentation(outputs.followupSegmentationNode, outputDir / "followup.seg.nrrd")
    mrml.saveTransformNode(outputs.transformNode, outputDir / "followup_to_baseline.tfm")
    truth = json.loads(resources.samplePath("study_ground_truth.json").read_text())["lesions"]
    check = compareWithTruth(outputs.result, truth)
    seconds["total"] = round(time.perf_counter() - started, 2)
    report(1.0, "done")
    return {"operation": "demo", "summary": outputs.result["summary"], "lesions": outputs.result["lesions"],
            "registration": outputs.result.get("registration"), "ground_truth_check": check,
            "report": str(outputs.reportPath),
            "outputs": {"baseline_segmentation": str(outputDir / "baseline.seg.nrrd"),
                        "followup_segmentation": str(outputDir / "followup.seg.nrrd"),
                        "transform": str(outputDir / "followup_to_baseline.tfm"),
                        "lesions_csv": str(outputDir / "report" / "lesions.csv")},
            "warnings": outputs.warnings, "seconds": seconds}
