#!/usr/bin/env python3
"""Brain extraction (deepbet through ``BrainExtractor``): accuracy against reference brain masks,
agreement across acquisition geometry, time per 1 mm head on this machine, and the effect of the
mask on segmentation (whole-head vs skull-stripped agreement).

Cases:
* MNI ICBM152 2009 T1 (brain-masked template) against its brain region (tissue labels > 0);
* Colin27 whole-head T1 against the FSL BET brain of the same scan (``Testing/Data/real``);
* ``--philips-dir DIR``: a real 3T MPRAGE (``DIR/t1.nii.gz``, e.g. ``medanalysis import`` of
  neurolabusc/dcm_qa_philips_enh In/cl series 1301) against its HD-BET brain (``DIR/hdbet.nii.gz``,
  neurolabusc/nii2mesh data/bet.nii.gz; its largest component: the file has two spheres added);
* agreement: each head rotated by 20 degrees on a 1 x 1 x 2 mm grid, mask brought back to the
  original grid (nearest neighbour), Dice with the mask of the original.
* ``--contrasts``: whole-head T1/T2/FLAIR/PD-like renderings of held-out label maps 17-18 against
  their label-map brain (what happens on inputs that are not T1);
* ``--agreement``: the default segmentation model on held-out label maps 17-18 rendered as T1,
  whole-head and skull-stripped (same image, non-brain voxels zeroed): GM/WM Dice between the two
  inside the brain, with ``brain_mask`` off and auto.

Prints one JSON object; ``--figures DIR`` writes a slice picture per real head (red: ours, cyan: reference).
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


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(2.0 * np.logical_and(a, b).sum() / max(int(a.sum()) + int(b.sum()), 1)), 4)


def largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == sizes.argmax()


def rotated_thick(image, degrees: float = 20.0, slice_mm: float = 2.0):
    import SimpleITK as sitk

    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(np.deg2rad(degrees), 0.0, np.deg2rad(degrees) / 2)
    direction = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array([1.0, 1.0, slice_mm])
    size = np.ceil(np.array(image.GetSize()) * np.array(image.GetSpacing()) * 1.1 / spacing).astype(int)
    center = np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    origin = center - direction @ ((size - 1) * spacing / 2)
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), [int(v) for v in size], sitk.Transform(), sitk.sitkLinear,
                         tuple(origin), tuple(spacing), tuple(direction.ravel()), 0.0, sitk.sitkFloat32)


def figure(path: Path, image, ours: np.ndarray, reference: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from MedAnalysisLib.core import geometry

    oriented = geometry.reorient(image, "RAS")
    flip = lambda a: sitk.GetArrayFromImage(geometry.reorient(geometry.image_from_array(a.astype(np.uint8),  # noqa: E731
                                                                                         reference=image), "RAS"))
    array, ours_ras, reference_ras = sitk.GetArrayFromImage(oriented), flip(ours), flip(reference)
    centre = [int(v) for v in np.argwhere(ours_ras).mean(0)]
    views = [("axial", (centre[0], slice(None), slice(None))), ("coronal", (slice(None), centre[1], slice(None))),
             ("sagittal", (slice(None), slice(None), centre[2]))]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    for axis, (name, cut) in zip(axes, views):
        axis.imshow(array[cut], cmap="gray", origin="lower")
        axis.contour(ours_ras[cut], [0.5], colors="r", linewidths=0.8)
        axis.contour(reference_ras[cut], [0.5], colors="c", linewidths=0.8)
        axis.set_title(name)
        axis.axis("off")
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def agreement(threads: int) -> dict:
    import SimpleITK as sitk

    from MedAnalysisLib import mrml
    from MedAnalysisLib.logic.segmentationlogic import SegmentationLogic, SegmentationParameters
    from Training import synth

    scene = mrml.newScene()
    logic = SegmentationLogic(scene)
    paths = synth.label_map_paths(str(REPO / "Training" / "Data" / "synthseg_label_maps"), held_out=True)[:2]
    rows = []
    for index, path in enumerate(paths):
        anatomy = synth.load_label_map(path)
        image, labels, _ = synth.synthesize_case(anatomy, np.random.default_rng(7100 + index), None, whole_head_prob=1.0,
                                                 contrast="t1", lesion_count=(0, 0))
        stripped = image.copy()
        stripped[labels == 0] = 0
        brain = labels > 0
        row = {"anatomy": anatomy.name}
        for mode in ("off", "auto"):
            predictions = {}
            for name, array in (("head", image), ("stripped", stripped)):
                volume = anatomy.to_image(np.ascontiguousarray(array))
                node = mrml.volumeNodeFromImage(volume, scene, name=name)
                out = logic.segment(node, SegmentationParameters(device="cpu", threads=threads, brainMask=mode))
                predictions[name] = sitk.GetArrayFromImage(
                    mrml.labelmapFromSegmentationNode(out.segmentationNode, referenceImage=volume))
                scene.RemoveNode(out.segmentationNode)
                scene.RemoveNode(node)
            row[f"brain_mask_{mode}"] = {
                tissue: dice((predictions["head"] == value) & brain, (predictions["stripped"] == value) & brain)
                for tissue, value in (("gm", 2), ("wm", 3))}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"cases": rows, "mean": {mode: {t: round(float(np.mean([r[f"brain_mask_{mode}"][t] for r in rows])), 4)
                                           for t in ("gm", "wm")} for mode in ("off", "auto")}}


def contrasts(extractor) -> dict:
    """Masks of whole-head T1/T2/FLAIR/PD-like renderings of held-out anatomies 17-18 against their
    label-map brain (CSF, GM, WM, lesion labels): what happens on inputs that are not T1."""
    import SimpleITK as sitk

    from Training import synth

    paths = synth.label_map_paths(str(REPO / "Training" / "Data" / "synthseg_label_maps"), held_out=True)[:2]
    rows = []
    for path in paths:
        anatomy = synth.load_label_map(path)
        for contrast in ("t1", "t2", "flair", "pd"):
            image, labels, _ = synth.synthesize_case(anatomy, np.random.default_rng(5), None, whole_head_prob=1.0,
                                                     contrast=contrast, lesion_count=(0, 0))
            out = extractor.extract(anatomy.to_image(np.ascontiguousarray(image)))
            ours = sitk.GetArrayFromImage(out.mask) > 0
            rows.append({"anatomy": anatomy.name, "contrast": contrast, "dice_vs_label_brain": dice(ours, labels > 0),
                         "volume_ml": round(out.volume_ml, 1), "label_brain_ml": round(float((labels > 0).sum()) / 1000, 1)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"cases": rows, "mean": {c: round(float(np.mean([r["dice_vs_label_brain"] for r in rows if r["contrast"] == c])), 4)
                                    for c in ("t1", "t2", "flair", "pd")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--philips-dir", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--agreement", action="store_true")
    ap.add_argument("--contrasts", action="store_true", help="T2/FLAIR/PD-like inputs (held-out label maps)")
    ap.add_argument("--figures", default=None, help="folder for slice pictures")
    args = ap.parse_args(argv)

    import SimpleITK as sitk
    import torch

    from MedAnalysisLib.core import brain

    torch.set_num_threads(args.threads)
    sample, real = REPO / "Resources" / "SampleData", REPO / "Testing" / "Data" / "real"
    cases = [("mni152_t1", sitk.ReadImage(str(sample / "mni152_t1.nii.gz")),
              sitk.GetArrayFromImage(sitk.ReadImage(str(sample / "mni152_tissue_labels.nii.gz"))) > 0,
              "template brain region"),
             ("colin27_head", sitk.ReadImage(str(real / "colin27_t1_head.nii.gz")),
              sitk.GetArrayFromImage(sitk.ReadImage(str(real / "colin27_t1_bet.nii.gz"))) > 0, "FSL BET")]
    if args.philips_dir:
        folder = Path(args.philips_dir)
        t1 = sitk.ReadImage(str(folder / "t1.nii.gz"))
        hdbet = sitk.ReadImage(str(folder / "hdbet.nii.gz"))
        reference = largest_component(sitk.GetArrayFromImage(hdbet) > 0).astype(np.uint8)
        reference_image = sitk.GetImageFromArray(reference)
        reference_image.CopyInformation(hdbet)
        on_t1 = sitk.Resample(reference_image, t1, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        cases.append(("philips_mprage_head", t1, sitk.GetArrayFromImage(on_t1) > 0, "HD-BET"))

    started = time.perf_counter()
    extractor = brain.BrainExtractor("cpu")
    result = {"load_seconds": round(time.perf_counter() - started, 2), "threads": args.threads,
              "deepbet": brain.DEEPBET_VERSION, "cases": []}
    for name, image, reference, reference_kind in cases:
        started = time.perf_counter()
        out = extractor.extract(image)
        seconds = time.perf_counter() - started
        ours = sitk.GetArrayFromImage(out.mask) > 0
        rotated = extractor.extract(rotated_thick(image))
        back = sitk.GetArrayFromImage(sitk.Resample(rotated.mask, image, sitk.Transform(),
                                                    sitk.sitkNearestNeighbor, 0)) > 0
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        row = {"case": name, "size": list(image.GetSize()), "reference": reference_kind,
               "dice_vs_reference": dice(ours, reference), "volume_ml": round(out.volume_ml, 1),
               "reference_ml": round(float(reference.sum()) * voxel_ml, 1),
               "dice_rotated_1x1x2_vs_original": dice(back, ours), "seconds": round(seconds, 2)}
        result["cases"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.figures and name != "mni152_t1":
            figure(Path(args.figures) / f"brain_{name}.png", image, ours, reference,
                   f"{name}: ours (red) vs {reference_kind} (cyan), Dice {row['dice_vs_reference']}")
    if args.contrasts:
        result["contrasts"] = contrasts(extractor)
    if args.agreement:
        result["segmentation_head_vs_stripped"] = agreement(args.threads)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
