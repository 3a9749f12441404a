#!/usr/bin/env python3
"""Lesion change monitoring end to end (segmentation included) on follow-up pairs made from the
held-out anatomies, and the bundled demo's count of lesions that are not in its ground truth.

For each held-out label map (``Training.synth.HELD_OUT_MAPS``: real subjects never used in
training) a skull-stripped T1-like volume is rendered (no lesions), and
``Training.phantom.make_study_pair`` adds lesions with known fates (grown, shrunk, stable,
vanished, new), head motion, bias and noise between the time points. ``MonitoringLogic.monitor``
then segments both time points with the default model (no segmentation given), registers and
matches. Change F1 = micro F1 of the status over true lesions, predicted lesions that match no
true lesion counting as errors (``Training.phantom.score_monitoring``).

    python Testing/Benchmarks/eval_monitor.py [--pairs 4] [--lesions 8] [--demo]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--lesions", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=9001)
    ap.add_argument("--demo", action="store_true", help="also run the bundled demo and count its extra lesions")
    args = ap.parse_args(argv)

    import SimpleITK as sitk

    from MedAnalysisLib import mrml
    from MedAnalysisLib.logic.monitoringlogic import MonitoringLogic, MonitoringParameters
    from Training import phantom, synth

    paths = synth.label_map_paths(str(REPO / "Training" / "Data" / "synthseg_label_maps"), held_out=True)
    rows = []
    for index in range(args.pairs):
        anatomy = synth.load_label_map(paths[index % len(paths)])
        seed = args.first_seed + index
        # lesion-free rendering: the maps' own lesions are drawn as white matter, so that the pair's lesions
        # are the whole truth (drawing them as lesions but scoring them as white matter would count every
        # correct detection of them as an extra lesion)
        image, labels, _ = synth.synthesize_case(anatomy, np.random.default_rng(seed), None, whole_head_prob=0.0,
                                                 lesion_count=(0, 0), contrast="t1", lesion_free_prob=1.0)
        t1 = anatomy.to_image(np.ascontiguousarray(image * 255.0, dtype=np.float32))
        tissue = anatomy.to_image(np.ascontiguousarray(labels))
        pair = phantom.make_study_pair(t1, sitk.Cast(tissue, sitk.sitkUInt8), seed=seed, n_lesions=args.lesions)
        scene = mrml.newScene()
        baseline = mrml.volumeNodeFromImage(pair.baseline, scene, name="baseline")
        followup = mrml.volumeNodeFromImage(pair.followup, scene, name="followup")
        outputs = MonitoringLogic(scene).monitor(baseline, followup, MonitoringParameters())
        f1, volume_errors, centroid_errors, failures = phantom.score_monitoring(outputs.result, pair.truth)
        row = {"anatomy": anatomy.name, "seed": seed, "true_lesions": len(pair.truth),
               "reported_lesions": len(outputs.result["lesions"]), "change_f1": round(f1, 4),
               "median_volume_error": round(float(np.median(volume_errors)), 4) if volume_errors else None,
               "failures": [list(map(str, f)) for f in failures]}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        scene.Clear(1)
    result = {"pairs": rows, "mean_change_f1": round(float(np.mean([r["change_f1"] for r in rows])), 4) if rows else None}
    if args.demo:
        import tempfile

        from MedAnalysisLib.demo import runDemo

        with tempfile.TemporaryDirectory() as folder:
            demo = runDemo(Path(folder))
        result["demo_ground_truth_check"] = demo["ground_truth_check"]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
