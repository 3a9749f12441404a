#!/usr/bin/env python3
"""The default segmentation on real head MRIs that no one here made: a slice picture per image
(axial, coronal, sagittal through the brain's centre; CSF blue, GM grey-green, WM yellow, lesions
red outline; the reference lesion mask, when given, in cyan) and the volumes per class.

Usage::

    python Testing/Benchmarks/figures_real_segment.py --out Testing/Benchmarks/figures \\
        colin27_t1_head=Testing/Data/real/colin27_t1_head.nii.gz \\
        philips_mprage=/path/to/t1.nii.gz \\
        ms_patient07_flair=/path/FLAIR.nii.gz:/path/GOLD_STANDARD.nii.gz

Each case runs the product path (``SegmentationLogic.segment`` on a real MRML scene, default
parameters: brain extraction and refinement on). Prints one JSON line per case: seconds, volume
per class in mL, lesion count, and with a reference lesion mask the lesion scores of
``eval_segment_model.lesion_detection`` (reference lesions >= ``--min-lesion-ml``).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

COLOURS = {1: (0.35, 0.55, 0.95), 2: (0.55, 0.75, 0.45), 3: (0.98, 0.9, 0.45)}


def figure(path: Path, image, labels: np.ndarray, reference, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from MedAnalysisLib.core import geometry

    def ras(array):
        return sitk.GetArrayFromImage(geometry.reorient(geometry.image_from_array(array.astype(np.uint8),
                                                                                  reference=image), "RAS"))

    grey = sitk.GetArrayFromImage(geometry.reorient(sitk.Cast(image, sitk.sitkFloat32), "RAS"))
    lab = ras(labels)
    ref = ras(reference) if reference is not None else None
    brain = np.argwhere(lab > 0)
    centre = [int(v) for v in brain.mean(0)] if len(brain) else [s // 2 for s in lab.shape]
    lesion = np.argwhere(lab == 4)
    if len(lesion):  # cut through the largest lesion load: the axial slice with the most lesion voxels
        centre[0] = int(np.bincount(lesion[:, 0]).argmax())
    views = [("axial", (centre[0], slice(None), slice(None))), ("coronal", (slice(None), centre[1], slice(None))),
             ("sagittal", (slice(None), slice(None), centre[2]))]
    high = np.percentile(grey[grey > 0], 99.5) if (grey > 0).any() else 1.0
    fig, axes = plt.subplots(2, 3, figsize=(13, 9))
    for column, (name, cut) in enumerate(views):
        for row in range(2):
            axis = axes[row, column]
            axis.imshow(grey[cut], cmap="gray", origin="lower", vmin=0, vmax=high)
            if row == 1:
                overlay = np.zeros(lab[cut].shape + (4,))
                for value, colour in COLOURS.items():
                    overlay[lab[cut] == value] = (*colour, 0.45)
                axis.imshow(overlay, origin="lower")
                if (lab[cut] == 4).any():
                    axis.contour(lab[cut] == 4, [0.5], colors="r", linewidths=0.9)
                if ref is not None and ref[cut].any():
                    axis.contour(ref[cut] > 0, [0.5], colors="c", linewidths=0.7)
            axis.set_title(name if row == 0 else f"{name}: segmentation")
            axis.axis("off")
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="+", metavar="NAME=IMAGE[:LESION_MASK]")
    ap.add_argument("--out", default=str(REPO / "Testing" / "Benchmarks" / "figures"))
    ap.add_argument("--model", default="brain-tissue-lesion")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-lesion-ml", type=float, default=0.1, help="reference lesions counted (as in the eval)")
    args = ap.parse_args()

    import SimpleITK as sitk

    from MedAnalysisLib import mrml
    from MedAnalysisLib.core import geometry
    from MedAnalysisLib.core.imageio import read_image
    from eval_segment_model import lesion_detection
    from MedAnalysisLib.logic.segmentationlogic import SegmentationLogic, SegmentationParameters

    for case in args.cases:
        name, _, paths = case.partition("=")
        image_path, _, mask_path = paths.partition(":")
        scene = mrml.newScene()
        node = mrml.loadVolumeNode(image_path, scene, name=name)
        started = time.perf_counter()
        outputs = SegmentationLogic(scene).segment(node, SegmentationParameters(model=args.model,
                                                                                threads=args.threads))
        seconds = time.perf_counter() - started
        image = mrml.imageFromVolumeNode(node)
        labels = sitk.GetArrayFromImage(mrml.labelmapFromSegmentationNode(outputs.segmentationNode,
                                                                         referenceImage=image))
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        result = {"case": name, "size": list(image.GetSize()), "seconds": round(seconds, 1),
                  "ml": {k: round(float((labels == v).sum()) * voxel_ml, 1)
                         for k, v in (("csf", 1), ("gm", 2), ("wm", 3), ("lesion", 4))},
                  "messages": outputs.messages}
        reference = None
        if mask_path:
            reference_image = geometry.resample_to_grid(read_image(mask_path), geometry.grid_of(image),
                                                        sitk.sitkNearestNeighbor)
            reference = sitk.GetArrayFromImage(reference_image) > 0
            result.update(lesion_detection(labels == 4, reference, voxel_ml, args.min_lesion_ml))
        figure(Path(args.out) / f"segment_{name}.png", image, labels, reference,
               f"{name}: default model, brain extraction + refinement ({seconds:.0f} s on {args.threads} threads)")
        print(json.dumps(result), flush=True)
        scene.Clear(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
