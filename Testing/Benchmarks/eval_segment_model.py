#!/usr/bin/env python3
"""Accuracy of the brain tissue / lesion model: held-out real anatomies in several contrasts, the
MNI T1, and real MS patients' FLAIR with expert lesion masks (with a naive baseline rule).

Synthetic cases are rendered by the training generator (:mod:`Training.synth`) from the four
label maps that training never sees (``synth.HELD_OUT_MAPS``: real subjects, real-shaped
white-matter lesions from their lesion labels, no synthetic lesions added), one table per
contrast (``--contrasts t1,t2,flair``). The four cases of a contrast cover whole-head and
skull-stripped inputs, each once at 1 mm isotropic and once rotated by 20 degrees on a
1 x 1 x 3 mm grid (thick slices: the image is blurred along the slice axis before sampling); the
prediction is scored on the 1 mm reference grid. Seeds start at ``--first-seed`` (training
streams use [seed, step, worker], validation 1001-1004).

Every case goes through the product path (``SegmentationLogic.segment`` on a real MRML scene:
brain extraction, model preprocessing, sliding window, refinement, lesion postprocessing, labels
on the input grid). ``--brain-mask off`` and ``--refine on|off`` compare the variants.

Real MS data (``--ms-dir DIR`` with ``patientNN/{FLAIR,T1}.nii.gz`` and ``patientNN/lesions.nii.gz``:
the skull-stripped, MNI-registered copies of Lesjak et al. 2017, CC-BY) are scored for lesions
only, from the FLAIR alone and from the T1 alone, beside the baseline rule of the segmentation
issue: FLAIR above the white-matter median + 3 robust SD (1.4826 MAD) inside a 3-class k-means
white-matter mask of the T1, components >= 10 voxels.

Lesion-wise detection: a reference lesion (26-connected component) of at least
``--min-lesion-ml`` counts as found when a predicted lesion voxel overlaps it; a false positive
is a predicted lesion component touching no reference lesion. Lesion F1 = 2 TP / (2 TP + FN + FP)
over lesions. Prints one JSON object (cases, tables, goals) and, with ``--markdown``, the tables.

    python Testing/Benchmarks/eval_segment_model.py [--model NAME|PATH] [--cases-per-contrast 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CLASSES = ("csf", "gm", "wm", "lesion")
GOALS = {"t1": {"gm": 0.90, "wm": 0.90, "csf": 0.80}, "t2": {"gm": 0.85, "wm": 0.85, "csf": 0.75},
         "flair": {"gm": 0.85, "wm": 0.85, "csf": 0.75},
         "lesion": {"dice": 0.70, "sensitivity": 0.90, "fp_per_scan": 1.0}}
VARIANTS = (("head", "iso"), ("stripped", "iso"), ("head", "oblique"), ("stripped", "oblique"))


def dice(pred: np.ndarray, ref: np.ndarray, value: int):
    p, r = pred == value, ref == value
    if not r.any():
        return None
    return round(2.0 * float(np.logical_and(p, r).sum()) / (int(p.sum()) + int(r.sum())), 4)


def lesion_detection(pred: np.ndarray, ref: np.ndarray, voxel_ml: float, min_ml: float) -> dict:
    """``pred``/``ref``: boolean lesion masks on one grid."""
    from scipy import ndimage

    structure = np.ones((3, 3, 3), bool)
    ref_cc, n_ref = ndimage.label(ref, structure=structure)
    pred_cc, n_pred = ndimage.label(pred, structure=structure)
    ref_sizes = np.bincount(ref_cc.ravel(), minlength=n_ref + 1) * voxel_ml
    overlap_ref = set(np.unique(ref_cc[pred & (ref_cc > 0)]).tolist())
    overlap_pred = set(np.unique(pred_cc[ref & (pred_cc > 0)]).tolist())
    counted = [k for k in range(1, n_ref + 1) if ref_sizes[k] >= min_ml]
    found = [k for k in counted if k in overlap_ref]
    false_pos = [k for k in range(1, n_pred + 1) if k not in overlap_pred]
    total = int(pred.sum()) + int(ref.sum())
    f1_den = 2 * len(found) + (len(counted) - len(found)) + len(false_pos)
    return {"lesion_dice": round(2.0 * float(np.logical_and(pred, ref).sum()) / total, 4) if ref.any() else None,
            "reference_lesions": len(counted), "found": len(found), "false_positives": len(false_pos),
            "lesion_f1": round(2 * len(found) / f1_den, 4) if f1_den else None,
            "missed_ml": [round(float(ref_sizes[k]), 3) for k in counted if k not in overlap_ref]}


def score(pred: np.ndarray, ref: np.ndarray, voxel_ml: float, min_ml: float) -> dict:
    entry = {name: dice(pred, ref, value) for value, name in enumerate(CLASSES, start=1)}
    entry.update(lesion_detection(pred == 4, ref == 4, voxel_ml, min_ml))
    return entry


# --- cases ---------------------------------------------------------------------------------------

def oblique_thick(image, seed: int, slice_mm: float = 3.0, degrees: float = 20.0):
    """The image rotated by ``degrees`` (random axis) on a 1 x 1 x ``slice_mm`` grid, blurred along
    the slice axis first (thick-slice acquisition)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    rotation = sitk.VersorTransform(tuple(axis), np.deg2rad(degrees))
    direction = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(image.GetDirection()).reshape(3, 3)
    size = np.array(image.GetSize(), float)
    spacing = np.array([1.0, 1.0, slice_mm])
    center = np.array(image.TransformContinuousIndexToPhysicalPoint(list((size - 1) / 2)))
    out_size = np.ceil(size * 1.15 / spacing).astype(int)
    origin = center - direction @ ((out_size - 1) * spacing / 2)
    blur_axis = direction[:, 2]  # slice normal in LPS; blur the 1 mm image along it (approximately)
    sigma = [float(abs(blur_axis[i]) * slice_mm / 2.355 + 0.3) for i in range(3)]
    blurred = sitk.SmoothingRecursiveGaussian(image, sigma)
    return sitk.Resample(blurred, [int(v) for v in out_size], sitk.Transform(), sitk.sitkLinear,
                         tuple(origin), tuple(spacing), tuple(direction.ravel()), 0.0, sitk.sitkFloat32)


def synthetic_cases(args):
    from Training import synth

    data_dir = REPO / "Training" / "Data" / "synthseg_label_maps"
    anatomies = [synth.load_label_map(str(p)) for p in synth.label_map_paths(str(data_dir), held_out=True)]
    for contrast in args.contrasts.split(","):
        for index in range(args.cases_per_contrast):
            anatomy = anatomies[index % len(anatomies)]
            head, grid = VARIANTS[index % len(VARIANTS)]
            seed = args.first_seed + 100 * CONTRAST_INDEX[contrast] + index
            rng = np.random.default_rng(seed)
            image, ref, info = synth.synthesize_case(anatomy, rng, None, whole_head_prob=1.0 if head == "head" else 0.0,
                                                     lesion_count=(0, 0), contrast=contrast)
            yield {"case": f"{contrast}_{anatomy.name[-2:]}_{head}_{grid}", "contrast": contrast, "anatomy": anatomy.name,
                   "whole_head": head == "head", "grid": grid, "seed": seed,
                   "image": anatomy.to_image(np.ascontiguousarray(image)), "reference": ref,
                   "reference_image": anatomy.to_image(ref)}


CONTRAST_INDEX = {"t1": 0, "t2": 1, "pd": 2, "flair": 3, "random": 4}


def mni_case():
    import SimpleITK as sitk

    from MedAnalysisLib import resources

    image = sitk.ReadImage(str(resources.samplePath("mni152_t1.nii.gz")), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(resources.samplePath("mni152_tissue_labels.nii.gz")))
    return {"case": "mni152_t1", "contrast": "t1", "whole_head": False, "grid": "iso", "image": image,
            "reference": sitk.GetArrayFromImage(labels), "reference_image": labels}


# --- running ---------------------------------------------------------------------------------------

def segment(logic, scene, image, parameters):
    import SimpleITK as sitk

    from MedAnalysisLib import mrml

    node = mrml.volumeNodeFromImage(image, scene, name="case")
    started = time.perf_counter()
    out = logic.segment(node, parameters)
    seconds = time.perf_counter() - started
    labels = mrml.labelmapFromSegmentationNode(out.segmentationNode, referenceImage=image)
    scene.RemoveNode(out.segmentationNode)
    scene.RemoveNode(node)
    return labels, seconds


def run_synthetic(args, logic, scene, parameters) -> list:
    import SimpleITK as sitk

    cases = list(synthetic_cases(args)) if args.cases_per_contrast > 0 else []
    if not args.no_mni:
        cases.append(mni_case())
    results = []
    for case in cases:
        image = case["image"]
        if case["grid"] == "oblique":
            image = oblique_thick(image, case["seed"])
        labels, seconds = segment(logic, scene, image, parameters)
        on_reference = sitk.Resample(labels, case["reference_image"], sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        pred = sitk.GetArrayFromImage(on_reference)
        voxel_ml = float(np.prod(case["reference_image"].GetSpacing())) / 1000.0
        entry = {k: v for k, v in case.items() if k not in ("image", "reference", "reference_image")}
        entry.update(score(pred, case["reference"], voxel_ml, args.min_lesion_ml))
        entry["seconds"] = round(seconds, 1)
        results.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)
    return results


def kmeans_white_matter(t1: np.ndarray, brain: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Brightest of 3 k-means intensity clusters of the T1 inside ``brain`` (white matter on T1)."""
    values = t1[brain].astype(np.float64)
    centers = np.percentile(values, [15, 50, 85])
    for _ in range(iterations):
        assign = np.argmin(np.abs(values[:, None] - centers[None]), axis=1)
        new = np.array([values[assign == k].mean() if np.any(assign == k) else centers[k] for k in range(3)])
        if np.allclose(new, centers):
            break
        centers = new
    wm = np.zeros(t1.shape, bool)
    wm[brain] = assign == int(np.argmax(centers))
    return wm


def baseline_rule(flair: np.ndarray, t1: np.ndarray, voxel_ml: float) -> np.ndarray:
    """The naive rule of the segmentation issue (lesion mask)."""
    from scipy import ndimage

    brain = (t1 > 0) & (flair > 0)
    wm = kmeans_white_matter(t1, brain)
    values = flair[wm]
    median = np.median(values)
    robust_sd = 1.4826 * np.median(np.abs(values - median))
    candidate = wm & (flair > median + 3 * robust_sd)
    components, count = ndimage.label(candidate, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(components.ravel())
    keep = np.nonzero(sizes >= 10)[0]
    return np.isin(components, keep[keep > 0])


def run_ms(args, logic, scene, parameters) -> list:
    import SimpleITK as sitk

    results = []
    for folder in sorted(Path(args.ms_dir).glob("patient*")):
        flair = sitk.ReadImage(str(folder / "FLAIR.nii.gz"), sitk.sitkFloat32)
        t1 = sitk.ReadImage(str(folder / "T1.nii.gz"), sitk.sitkFloat32)
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "lesions.nii.gz"))) > 0
        voxel_ml = float(np.prod(flair.GetSpacing())) / 1000.0
        rule = baseline_rule(sitk.GetArrayFromImage(flair), sitk.GetArrayFromImage(t1), voxel_ml)
        entry = {"case": folder.name, "reference_ml": round(float(reference.sum()) * voxel_ml, 2),
                 "baseline_rule": lesion_detection(rule, reference, voxel_ml, args.min_lesion_ml)}
        for name, image in (("flair", flair), ("t1", t1)):
            labels, seconds = segment(logic, scene, image, parameters)
            pred = sitk.GetArrayFromImage(labels) == 4
            entry[f"model_{name}"] = {**lesion_detection(pred, reference, voxel_ml, args.min_lesion_ml),
                                      "seconds": round(seconds, 1)}
        results.append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)
    return results


# --- tables ----------------------------------------------------------------------------------------

def mean(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(float(np.mean(values)), 4) if values else None


def lesion_summary(rows) -> dict:
    total = sum(r["reference_lesions"] for r in rows)
    return {"lesion_dice": mean(rows, "lesion_dice"),
            "lesion_sensitivity": round(sum(r["found"] for r in rows) / total, 4) if total else None,
            "false_positives_per_scan": round(sum(r["false_positives"] for r in rows) / len(rows), 2) if rows else None,
            "lesion_f1": mean(rows, "lesion_f1"), "reference_lesions": total}


def summarize(synthetic: list, ms: list) -> dict:
    tables = {}
    for contrast in sorted({r["contrast"] for r in synthetic if r["case"] != "mni152_t1"}):
        rows = [r for r in synthetic if r["contrast"] == contrast and r["case"] != "mni152_t1"]
        tables[contrast] = {"cases": len(rows), **{k: mean(rows, k) for k in CLASSES[:3]}, **lesion_summary(rows)}
        for part, subset in (("whole_head", [r for r in rows if r["whole_head"]]),
                             ("skull_stripped", [r for r in rows if not r["whole_head"]]),
                             ("oblique_thick", [r for r in rows if r["grid"] == "oblique"])):
            tables[contrast][part] = {k: mean(subset, k) for k in CLASSES[:3]}
    mni = [r for r in synthetic if r["case"] == "mni152_t1"]
    if mni:
        tables["mni152_t1"] = {k: mni[0][k] for k in CLASSES[:3]} | {"lesion_false_positives": mni[0]["false_positives"]}
    if ms:
        tables["ms_real"] = {name: {"lesion_dice": mean([r[name] for r in ms], "lesion_dice"),
                                    "lesion_f1": mean([r[name] for r in ms], "lesion_f1"),
                                    **{k: v for k, v in lesion_summary([r[name] for r in ms]).items()
                                       if k in ("lesion_sensitivity", "false_positives_per_scan")}}
                             for name in ("baseline_rule", "model_flair", "model_t1")}
    return tables


def markdown(tables: dict) -> str:
    lines = []
    for contrast in ("t1", "t2", "flair", "pd", "random"):
        if contrast not in tables:
            continue
        t = tables[contrast]
        lines += [f"\n**{contrast.upper()}-like** ({t['cases']} held-out cases)", "",
                  "| | CSF | GM | WM |", "|---|---|---|---|",
                  f"| all | {t['csf']} | {t['gm']} | {t['wm']} |"]
        for part in ("whole_head", "skull_stripped", "oblique_thick"):
            lines.append(f"| {part.replace('_', ' ')} | {t[part]['csf']} | {t[part]['gm']} | {t[part]['wm']} |")
        lines.append(f"\nlesions: Dice {t['lesion_dice']}, sensitivity {t['lesion_sensitivity']} "
                     f"({t['reference_lesions']} lesions), false positives per scan {t['false_positives_per_scan']}, "
                     f"lesion F1 {t['lesion_f1']}")
    if "mni152_t1" in tables:
        m = tables["mni152_t1"]
        lines.append(f"\n**MNI T1**: CSF {m['csf']}, GM {m['gm']}, WM {m['wm']}, "
                     f"lesion false positives {m['lesion_false_positives']}")
    if "ms_real" in tables:
        lines += ["\n**Real MS patients** (lesions)", "", "| method | Dice | F1 | sensitivity | FP/scan |",
                  "|---|---|---|---|---|"]
        for name, row in tables["ms_real"].items():
            lines.append(f"| {name} | {row['lesion_dice']} | {row['lesion_f1']} | {row['lesion_sensitivity']} | "
                         f"{row['false_positives_per_scan']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="brain-tissue-lesion", help="catalog name or model file")
    ap.add_argument("--contrasts", default="t1,t2,flair")
    ap.add_argument("--cases-per-contrast", type=int, default=4)
    ap.add_argument("--first-seed", type=int, default=5001)
    ap.add_argument("--no-mni", action="store_true")
    ap.add_argument("--ms-dir", default=None, help="folder of patientNN/{FLAIR,T1,lesions}.nii.gz (real MS data)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-lesion-ml", type=float, default=0.1)
    ap.add_argument("--brain-mask", default="auto", choices=("auto", "off"))
    ap.add_argument("--refine", default=None, choices=("on", "off"), help="default: the product's default")
    ap.add_argument("--lesion-threshold", type=float, default=None, help="default: the model's (else argmax)")
    ap.add_argument("--markdown", action="store_true", help="also print the tables as markdown (stderr)")
    args = ap.parse_args(argv)

    import torch

    from MedAnalysisLib import mrml
    from MedAnalysisLib.logic.segmentationlogic import SegmentationLogic, SegmentationParameters

    torch.set_num_threads(args.threads)
    parameters = SegmentationParameters(model=args.model, device="cpu", threads=args.threads,
                                        lesionThreshold=args.lesion_threshold, brainMask=args.brain_mask)
    if args.refine is not None:
        parameters.refine = args.refine == "on"
    scene = mrml.newScene()
    logic = SegmentationLogic(scene)
    synthetic = run_synthetic(args, logic, scene, parameters)
    ms = run_ms(args, logic, scene, parameters) if args.ms_dir else []
    tables = summarize(synthetic, ms)
    model = logic.loadModel(parameters)
    print(json.dumps({"model": model.source, "model_sha256": model.sha256, "brain_mask": args.brain_mask,
                      "refine": parameters.refine, "min_lesion_ml": args.min_lesion_ml, "goals": GOALS,
                      "tables": tables, "cases": synthetic, "ms_cases": ms}, indent=1))
    if args.markdown:
        print(markdown(tables), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
