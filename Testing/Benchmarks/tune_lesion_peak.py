#!/usr/bin/env python3
"""Choose a model's lesion peak rule (``inference.lesion_min_peak``) on validation data only.

The rule (``engine.remove_weak_components``): a lesion component is kept only when its highest
lesion probability reaches the threshold. The threshold is chosen here on **validation** renders:
the four held-out anatomies (``synth.HELD_OUT_MAPS``) in each contrast, at seeds from
``--first-seed`` (default 9100; the evaluation in ``eval_segment_model.py`` uses 5001+ and
training validation 1001-1004, so no evaluation case is seen), whole head and skull-stripped,
plus the MNI T1 (no lesion). Real patients' scans are never used.

Each case goes through the product path without the rule (brain extraction, network,
refinement, the other lesion filters). For every predicted lesion component its peak
probability is read from the (refined) probability map; a reference lesion of at least
``--min-lesion-ml`` is found at threshold T when a component overlapping it peaks at T or more;
a component touching no reference lesion is a false positive at T when it peaks at T or more.
With ``--criterion f1`` (default) the chosen threshold is the one with the best lesion-wise F1
over all validation cases pooled (2 TP / (2 TP + FN + FP)): false lesions weigh as much as missed
ones, which is what monitoring needs. With ``--criterion sensitivity`` it is the highest one on the
grid whose lesion-wise sensitivity stays at or above ``--sensitivity`` (the issue's 0.90). Prints the whole curve as JSON; ``--write`` stores the
threshold in the model JSON (the weights, hence the catalog hash, do not change).

    python Testing/Benchmarks/tune_lesion_peak.py --model Resources/Models/brain_tissue_lesion_unet.safetensors [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GRID = tuple(round(v, 2) for v in np.arange(0.50, 1.0, 0.01))


def component_peaks(pred: np.ndarray, probability: np.ndarray, reference: np.ndarray, voxel_ml: float,
                    min_ml: float) -> dict:
    """Peaks of predicted components (split into touching a reference lesion or not) and, per
    reference lesion of at least ``min_ml``, the best peak of the components overlapping it."""
    from scipy import ndimage

    structure = np.ones((3, 3, 3), bool)
    pred_cc, n_pred = ndimage.label(pred, structure=structure)
    ref_cc, n_ref = ndimage.label(reference, structure=structure)
    peaks = np.zeros(n_pred + 1)
    if n_pred:
        peaks[1:] = ndimage.maximum(probability, pred_cc, index=np.arange(1, n_pred + 1))
    touching = set(np.unique(pred_cc[reference & (pred_cc > 0)]).tolist())
    false_peaks = [float(peaks[k]) for k in range(1, n_pred + 1) if k not in touching]
    sizes = np.bincount(ref_cc.ravel(), minlength=n_ref + 1) * voxel_ml
    found_peaks = []
    for k in range(1, n_ref + 1):
        if sizes[k] < min_ml:
            continue
        over = np.unique(pred_cc[(ref_cc == k) & (pred_cc > 0)])
        found_peaks.append(float(peaks[over].max()) if over.size else 0.0)
    return {"false_peaks": false_peaks, "lesion_peaks": found_peaks}


def curve(cases: list) -> list:
    lesions = [p for c in cases for p in c["lesion_peaks"]]
    false = [p for c in cases for p in c["false_peaks"]]
    rows = []
    for t in GRID:
        found = sum(p >= t for p in lesions)
        false_positives = sum(p >= t for p in false)
        f1_den = len(lesions) + found + false_positives
        rows.append({"threshold": t, "sensitivity": round(found / len(lesions), 4) if lesions else None,
                     "false_positives_per_scan": round(false_positives / len(cases), 2),
                     "lesion_f1": round(2 * found / f1_den, 4) if f1_den else None})
    return rows


def choose(rows: list, criterion: str, sensitivity: float):
    if criterion == "f1":
        scored = [r for r in rows if r["lesion_f1"] is not None]
        return max(scored, key=lambda r: (r["lesion_f1"], r["threshold"])) if scored else None
    ok = [r for r in rows if r["sensitivity"] is not None and r["sensitivity"] >= sensitivity]
    return max(ok, key=lambda r: r["threshold"]) if ok else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a .safetensors model with its JSON beside it")
    ap.add_argument("--contrasts", default="t1,t2,flair")
    ap.add_argument("--cases-per-contrast", type=int, default=4)
    ap.add_argument("--first-seed", type=int, default=9100)
    ap.add_argument("--min-lesion-ml", type=float, default=0.1)
    ap.add_argument("--criterion", default="f1", choices=("f1", "sensitivity"))
    ap.add_argument("--sensitivity", type=float, default=0.90, help="with --criterion sensitivity")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="store the chosen threshold in the model JSON")
    args = ap.parse_args(argv)
    if args.first_seed < 9000:
        ap.error("--first-seed below 9000 would overlap the evaluation seeds (5001+)")

    import SimpleITK as sitk
    import torch

    import eval_segment_model as evaluation
    from MedAnalysisLib import mrml
    from MedAnalysisLib.logic.segmentationlogic import SegmentationLogic, SegmentationParameters

    torch.set_num_threads(args.threads)
    # lesionPeak=1/255: the confidence path runs but no component is dropped by the rule itself
    parameters = SegmentationParameters(model=args.model, device="cpu", threads=args.threads, probabilities=True,
                                        lesionPeak=1.0 / 255.0)
    scene = mrml.newScene()
    logic = SegmentationLogic(scene)
    cases = list(evaluation.synthetic_cases(args)) + [evaluation.mni_case()]
    results = []
    for case in cases:
        image = case["image"]
        if case["grid"] == "oblique":
            image = evaluation.oblique_thick(image, case["seed"])
        node = mrml.volumeNodeFromImage(image, scene, name="case")
        out = logic.segment(node, parameters)
        labels = mrml.labelmapFromSegmentationNode(out.segmentationNode, referenceImage=image)
        probability = sitk.VectorIndexSelectionCast(mrml.imageFromVolumeNode(out.probabilityNode), 4)
        for n in (out.segmentationNode, out.probabilityNode, node):
            scene.RemoveNode(n)
        reference_image = case["reference_image"]
        pred = sitk.GetArrayFromImage(sitk.Resample(labels, reference_image, sitk.Transform(),
                                                    sitk.sitkNearestNeighbor, 0)) == 4
        probability = sitk.GetArrayFromImage(sitk.Resample(probability, reference_image, sitk.Transform(),
                                                           sitk.sitkLinear, 0.0))
        voxel_ml = float(np.prod(reference_image.GetSpacing())) / 1000.0
        entry = {"case": case["case"], **component_peaks(pred, probability, case["reference"] == 4, voxel_ml,
                                                         args.min_lesion_ml)}
        results.append(entry)
        print(json.dumps({"case": entry["case"], "lesions": len(entry["lesion_peaks"]),
                          "components_without_lesion": len(entry["false_peaks"])}), file=sys.stderr, flush=True)
    rows = curve(results)
    chosen = choose(rows, args.criterion, args.sensitivity)
    report = {"model": args.model, "first_seed": args.first_seed, "cases": len(results),
              "reference_lesions": sum(len(c["lesion_peaks"]) for c in results),
              "criterion": args.criterion, "target_sensitivity": args.sensitivity, "chosen": chosen, "curve": rows}
    print(json.dumps(report, indent=1))
    if args.write and chosen is not None:
        config_path = Path(args.model).with_suffix(".json")
        config = json.loads(config_path.read_text())
        config.setdefault("inference", {})["lesion_min_peak"] = chosen["threshold"]
        config["inference"]["lesion_min_peak_note"] = (
            f"chosen by Testing/Benchmarks/tune_lesion_peak.py on validation renders (held-out maps, seeds "
            f"{args.first_seed}+, {len(results)} cases), criterion {args.criterion}: lesion-wise sensitivity "
            f"{chosen['sensitivity']}, {chosen['false_positives_per_scan']} false positives per scan, lesion F1 "
            f"{chosen['lesion_f1']} there")
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"wrote lesion_min_peak {chosen['threshold']} to {config_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
