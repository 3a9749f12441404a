#!/usr/bin/env python3
"""Accuracy of a brain tissue / lesion model on held-out synthetic volumes and on the MNI T1.

Held-out cases come from the training generator (:mod:`MedAnalysisLib.core.segment.synth`)
with seeds the training never draws (training streams are seeded ``[seed, step, worker]``,
validation during training uses 1001-1004; these use ``--first-seed`` onwards, default 5001),
so every case has its own tissue contrast, bias field, noise, blur / thick slices, affine +
elastic warp, left-right flip and synthetic lesions; every other case is a whole head (skull,
scalp), the others skull-stripped. The real MNI ICBM152 T1 (brain-masked) is scored against its
tissue map. Each volume goes through the product path (``engine.segment_image``: model
preprocessing, sliding window, postprocessing, labels on the input grid).

Per class Dice (CSF, GM, WM, lesion); lesion-wise detection: a reference lesion (26-connected
component) of at least ``--min-lesion-ml`` counts as found when a predicted lesion voxel
overlaps it; a false positive is a predicted lesion component touching no reference lesion.
Prints one JSON object (per case and summary, with the issue's goals).

    python Testing/Benchmarks/eval_segment_model.py [--model PATH|catalog-name] [--cases 12]

``--sweep 0.3,0.4,0.5`` scores lesion probability thresholds from one inference per case (to
choose the model's ``inference.lesion_threshold`` on the validation seeds 1001-1004 with
``--first-seed 1001 --cases 4``, never on the held-out seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from MedAnalysisLib import resources  # noqa: E402
from MedAnalysisLib.core.segment import models  # noqa: E402
from Training import synth  # noqa: E402
from MedAnalysisLib.core.segment.engine import InferenceSettings, segment_image  # noqa: E402

CLASSES = ("csf", "gm", "wm", "lesion")
GOALS = {"gm": 0.90, "wm": 0.90, "csf": 0.80, "lesion_dice": 0.80, "lesion_sensitivity": 0.90, "fp_per_scan": 1.0}


def dice(pred: np.ndarray, ref: np.ndarray, value: int):
    p, r = pred == value, ref == value
    total = int(p.sum()) + int(r.sum())
    if not r.any():
        return None
    return round(2.0 * float(np.logical_and(p, r).sum()) / total, 4) if total else None


def lesion_detection(pred: np.ndarray, ref: np.ndarray, voxel_ml: float, min_ml: float) -> dict:
    from scipy import ndimage

    structure = np.ones((3, 3, 3), bool)
    ref_cc, n_ref = ndimage.label(ref == 4, structure=structure)
    pred_cc, n_pred = ndimage.label(pred == 4, structure=structure)
    ref_sizes = np.bincount(ref_cc.ravel(), minlength=n_ref + 1) * voxel_ml
    overlap_ref = set(np.unique(ref_cc[(pred == 4) & (ref_cc > 0)]).tolist())
    overlap_pred = set(np.unique(pred_cc[(ref == 4) & (pred_cc > 0)]).tolist())
    counted = [k for k in range(1, n_ref + 1) if ref_sizes[k] >= min_ml]
    found = [k for k in counted if k in overlap_ref]
    false_pos = [k for k in range(1, n_pred + 1) if k not in overlap_pred]
    return {"reference_lesions": len(counted), "found": len(found),
            "missed_ml": [round(float(ref_sizes[k]), 3) for k in counted if k not in overlap_ref],
            "false_positives": len(false_pos)}


def score(pred: np.ndarray, ref: np.ndarray, voxel_ml: float, min_ml: float) -> dict:
    entry = {name: dice(pred, ref, value) for value, name in enumerate(CLASSES, start=1)}
    entry.update(lesion_detection(pred, ref, voxel_ml, min_ml))
    return entry


def template_cases(args):
    """(template, [(name, image array, reference labels, info)]): held-out synthetic cases + the MNI T1."""
    template = synth.load_template(str(resources.samplePath("mni152_t1.nii.gz").parent))

    cases = []
    for index in range(args.cases):
        seed = args.first_seed + index
        whole_head = index % 2 == 0
        (image, ref, info), = synth.make_validation_set(template, [seed], whole_head=[whole_head])
        cases.append((f"synth_{seed}", image, ref, {"seed": seed, "whole_head": whole_head, "mode": info["mode"],
                                                    "flipped": info["flipped"], "thick_slices": info["thick_slices"],
                                                    "lesions_ml": [round(v, 3) for v in info["lesion_volumes_ml"]]}))
    image, ref, info = synth.template_case(template)
    cases.append(("mni152_t1", image, ref, {"mode": "mni152_t1 (real template T1, brain-masked, no lesions)"}))

    return template, cases


def sweep(args, model, prepared, thresholds) -> int:
    import SimpleITK as sitk
    import torch

    from MedAnalysisLib.core.segment.engine import decide_labels, postprocess_lesions

    template, cases = prepared
    settings = InferenceSettings(device="cpu", threads=args.threads, tta=args.tta, return_probabilities=True)
    sizes = [float(v) for v in args.sweep_min_ml.split(",")]
    rows = {(t, m): [] for t in thresholds for m in sizes}
    for name, array, ref, info in cases:
        image = template.to_image(np.ascontiguousarray(array, dtype=np.float32))
        out = segment_image(image, model.network, model.config, settings)
        probabilities = torch.from_numpy(np.moveaxis(sitk.GetArrayFromImage(out.probabilities), -1, 0).copy())
        if probabilities.shape[1:] != ref.shape:
            raise SystemExit("--sweep needs cases on the model grid (1 mm, RAS)")
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        for t, m in rows:
            pred = postprocess_lesions(decide_labels(probabilities, model.config, t).numpy(), model.config,
                                       image.GetSpacing(), m)
            rows[(t, m)].append({"case": name, **score(pred, ref, voxel_ml, args.min_lesion_ml)})
    summary = {}
    for (t, m), entries in rows.items():
        synthetic = [r for r in entries if r["case"].startswith("synth_")]
        total = sum(r["reference_lesions"] for r in synthetic)
        summary[f"threshold {t}, min {m} mL"] = {
            "lesion_dice": round(float(np.mean([r["lesion"] for r in synthetic if r["lesion"] is not None])), 4),
            "lesion_sensitivity": round(sum(r["found"] for r in synthetic) / total, 4) if total else None,
            "false_positives_per_scan": round(sum(r["false_positives"] for r in entries) / len(entries), 3),
            "gm": round(float(np.mean([r["gm"] for r in entries])), 4),
            "wm": round(float(np.mean([r["wm"] for r in entries])), 4)}
    print(json.dumps({"model": model.source, "seeds_from": args.first_seed, "cases": args.cases,
                      "sweep": summary}, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="brain-tissue-lesion", help="catalog name or model file")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--first-seed", type=int, default=5001)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-lesion-ml", type=float, default=0.1)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--lesion-threshold", type=float, default=None, help="default: the model's (else argmax)")
    ap.add_argument("--sweep", default=None, help="comma-separated lesion thresholds to compare (one inference)")
    ap.add_argument("--sweep-min-ml", default="0.02", help="comma-separated minimum lesion sizes (mL) for --sweep")
    args = ap.parse_args(argv)

    import SimpleITK as sitk
    import torch

    torch.set_num_threads(args.threads)
    model = models.load_model(args.model, resources.modelsDir())
    settings = InferenceSettings(device="cpu", threads=args.threads, tta=args.tta,
                                 lesion_threshold=args.lesion_threshold)
    if args.sweep:
        return sweep(args, model, template_cases(args), [float(v) for v in args.sweep.split(",")])
    template, cases = template_cases(args)

    results = []
    for name, array, ref, info in cases:
        image = template.to_image(np.ascontiguousarray(array, dtype=np.float32))
        started = time.perf_counter()
        out = segment_image(image, model.network, model.config, settings)
        seconds = time.perf_counter() - started
        pred = sitk.GetArrayFromImage(out.labels)
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        entry = {"case": name, **info, **score(pred, ref, voxel_ml, args.min_lesion_ml), "seconds": round(seconds, 1)}
        results.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)

    synthetic = [r for r in results if r["case"].startswith("synth_")]

    def mean(key, rows):
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(float(np.mean(values)), 4) if values else None

    ref_total = sum(r["reference_lesions"] for r in synthetic)
    summary = {
        "synthetic_cases": len(synthetic),
        "mean_dice": {k: mean(k, synthetic) for k in CLASSES},
        "mean_dice_whole_head": {k: mean(k, [r for r in synthetic if r["whole_head"]]) for k in CLASSES},
        "mean_dice_skull_stripped": {k: mean(k, [r for r in synthetic if not r["whole_head"]]) for k in CLASSES},
        "lesion_sensitivity": round(sum(r["found"] for r in synthetic) / ref_total, 4) if ref_total else None,
        "reference_lesions": ref_total,
        "false_positives_per_scan": round(sum(r["false_positives"] for r in results) / len(results), 3),
        "mni152_t1_dice": {k: results[-1][k] for k in CLASSES[:3]},
        "mni152_t1_lesion_false_positives": results[-1]["false_positives"],
    }
    md = summary["mean_dice"]
    summary["goals_met"] = {
        "gm>=0.90": md["gm"] is not None and md["gm"] >= GOALS["gm"],
        "wm>=0.90": md["wm"] is not None and md["wm"] >= GOALS["wm"],
        "csf>=0.80": md["csf"] is not None and md["csf"] >= GOALS["csf"],
        "lesion_dice>=0.80": md["lesion"] is not None and md["lesion"] >= GOALS["lesion_dice"],
        "lesion_sensitivity>=0.90": summary["lesion_sensitivity"] is not None
        and summary["lesion_sensitivity"] >= GOALS["lesion_sensitivity"],
        "fp_per_scan<=1": summary["false_positives_per_scan"] <= GOALS["fp_per_scan"],
    }
    print(json.dumps({"model": model.source, "model_sha256": model.sha256, "min_lesion_ml": args.min_lesion_ml,
                      "tta": args.tta, "summary": summary, "cases": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
