#!/usr/bin/env python3
"""Segmentation benchmark: our engine vs plain MONAI sliding_window_inference, and peak memory.

Speed (one run, same network and weights, same input: the MNI T1 grid, TTA off, Gaussian
blending for both, one warm-up each, timing from the input array in memory to the label map
on the input grid):
  * plain MONAI: percentile normalization (the model's), sliding_window_inference with the
    model's roi, overlap 0.25, sw_batch_size 1, float32, then the model's decision rule (argmax,
    or its lesion probability threshold: ``engine.decide_labels``) and the same lesion
    postprocessing as ours (``engine.postprocess_lesions``: lesion components under the model's
    peak probability rule, under the default minimum size or touching no white matter relabelled;
    applied to both so the maps compare);
  * ours: MedAnalysisLib.core.segment.engine.segment_image at its defaults.
Prints both times, the ratio and the Dice between the two label maps (per class present in
either map, with voxel counts, and the mean over those classes).

Memory (--memory): `medanalysis segment` on a 512x512x600 float32 volume with 0.7x0.7x1.0 mm
spacing (the MNI T1 resampled into it), measured with /usr/bin/time -v (peak RSS of the process).

    python Testing/Benchmarks/bench_segment.py [--threads 2] [--repeats 3] [--memory] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from MedAnalysisLib import resources  # noqa: E402
from MedAnalysisLib.core import geometry  # noqa: E402
from MedAnalysisLib.core.segment.engine import (  # noqa: E402
    decide_labels, lesion_confidence_of, lesion_min_peak, normalize_percentile, postprocess_lesions, segment_image)
from MedAnalysisLib.core.segment.parameters import SegmentationParameters  # noqa: E402
from MedAnalysisLib.core.segment.models import load_model  # noqa: E402


def dice(a, b, label):
    x, y = a == label, b == label
    total = x.sum() + y.sum()
    return float(2 * (x & y).sum() / total) if total else float("nan")


def plain_monai(image, model, device):
    import torch
    from monai.inferers import sliding_window_inference

    config = model.config
    model.network.to(memory_format=torch.contiguous_format)  # as a plain MONAI user has it
    array = normalize_percentile(sitk.GetArrayViewFromImage(image), config["preprocessing"]["intensity"])
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(array)[None, None].to(device),
                                          roi_size=config["inference"]["roi_size"], sw_batch_size=1,
                                          predictor=model.network, overlap=0.25, mode="gaussian")
        probabilities = torch.softmax(logits[0], 0)
        labels = decide_labels(probabilities, config)  # the model's decision rule
        peak = lesion_min_peak(config)
        lesion = next(int(e["value"]) for e in config["labels"] if e["name"] == "lesion")
        confidence = lesion_confidence_of(labels, probabilities, lesion) if peak is not None else None
        labels = labels.cpu().numpy()
    return postprocess_lesions(labels, config, image.GetSpacing(), SegmentationParameters().lesionMinMl,
                               confidence, peak)


def timed(function, repeats):
    times, value = [], None
    for _ in range(repeats):
        if device_is_cuda:
            import torch
            torch.cuda.synchronize()
        started = time.perf_counter()
        value = function()
        if device_is_cuda:
            import torch
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return value, times


device_is_cuda = False


def speed(args):
    global device_is_cuda
    import torch

    torch.set_num_threads(args.threads)
    device_is_cuda = args.device == "cuda"
    model = load_model(args.model, resources.modelsDir())
    model.network.to(args.device)
    image = sitk.ReadImage(str(resources.samplePath("mni152_t1.nii.gz")), sitk.sitkFloat32)
    settings = SegmentationParameters(device=args.device, threads=args.threads, tta=False, refine=False)
    plain_monai(image, model, args.device)  # warm-up
    segment_image(image, model.network, model.config, settings)
    plain, plain_times = timed(lambda: plain_monai(image, model, args.device), args.repeats)
    ours_result, ours_times = timed(lambda: segment_image(image, model.network, model.config, settings), args.repeats)
    ours = sitk.GetArrayFromImage(ours_result.labels)
    dices = {str(label): round(dice(plain, ours, label), 4) for label in range(1, 5)}
    counts = {str(label): [int((plain == label).sum()), int((ours == label).sum())] for label in range(1, 5)}
    valid = [v for v in dices.values() if v == v]
    return {"input": "MNI T1 197x233x189 @1 mm", "device": args.device, "threads": args.threads,
            "plain_monai_seconds": [round(t, 3) for t in plain_times],
            "ours_seconds": [round(t, 3) for t in ours_times],
            "plain_monai_median_s": round(float(np.median(plain_times)), 3),
            "ours_median_s": round(float(np.median(ours_times)), 3),
            "speedup_plain_over_ours": round(float(np.median(plain_times) / np.median(ours_times)), 2),
            "dice_between_label_maps": dices, "voxels_plain_ours": counts,
            "mean_dice": round(float(np.mean(valid)), 4)}


def memory(args):
    if not Path("/usr/bin/time").exists():
        return {"skipped": "/usr/bin/time is missing (apt-get install time)"}
    t1 = sitk.ReadImage(str(resources.samplePath("mni152_t1.nii.gz")), sitk.sitkFloat32)
    grid = {"size": [512, 512, 600], "spacing": (0.7, 0.7, 1.0), "direction": t1.GetDirection()}
    centre = np.array(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()]))
    direction = np.array(t1.GetDirection()).reshape(3, 3)
    grid["origin"] = tuple(centre - direction @ ((np.array(grid["size"]) - 1) / 2 * np.array(grid["spacing"])))
    big = geometry.resample_to_grid(t1, grid, sitk.sitkLinear, 0.0)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "big.nii"
        sitk.WriteImage(big, str(source))
        del big
        command = ["/usr/bin/time", "-v", sys.executable, "-m", "MedAnalysisLib.cli", "segment", str(source),
                   "-o", str(Path(folder) / "big.seg.nrrd"), "--device", "cpu", "--threads", str(args.threads),
                   "--model", args.model]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        seconds = time.perf_counter() - started
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    peak_gb = int(match.group(1)) / 1024 ** 2 if match else None
    return {"input": "512x512x600 float32, 0.7x0.7x1.0 mm", "exit_code": result.returncode,
            "peak_rss_gb": round(peak_gb, 3) if peak_gb else None, "seconds": round(seconds, 1),
            "goal_gb": 3.0, "stderr_tail": result.stderr.splitlines()[-3:] if result.returncode else []}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="brain-tissue-lesion")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    args = parser.parse_args()
    report = {"benchmark": "segment", "machine": platform.machine(), "cpus": os.cpu_count()}
    if args.device == "cuda":
        import torch
        report["gpu"] = torch.cuda.get_device_name(0)
    if not args.no_speed:
        report["speed"] = speed(args)
    if args.memory:
        report["memory"] = memory(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
