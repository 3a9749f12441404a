"""Benchmark: DICOM SEG export of a 5-label segmentation on a CT-sized series (512x512x300).

One run measures, on the same generated CT-like series (files shuffled) and the same 5-label map:
  * ``medanalysis export-dicom LABELS --reference SERIES -o OUT`` as a fresh process (wall, CPU,
    peak memory), median of ``--runs``;
  * the peer: highdicom alone building and writing the SEG from a label array already on the
    source frames, with the source headers already read: what a hand-written script does, without
    reading the series, checking it or sampling the label map on each source plane;
  * the in-process steps of ours: reading the reference headers, sampling the frames, building
    the SEG, writing it.
Prints one JSON object (ratio = ours / highdicom alone).

Usage: python Testing/Benchmarks/bench_dicom_seg.py [--slices 300] [--runs 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "Testing" / "Python"))
sys.path.insert(0, str(REPO / "Testing" / "Benchmarks"))


def five_labels(image: sitk.Image) -> sitk.Image:
    """Body, bone, and three slabs of the body (5 labels), on the image's own grid."""
    values = sitk.GetArrayViewFromImage(image)
    labels = np.zeros(values.shape, np.uint8)
    labels[values > -500] = 1
    third = values.shape[0] // 3
    labels[:third][values[:third] > -500] = 2
    labels[third:2 * third][values[third:2 * third] > -500] = 3
    labels[2 * third:][(values[2 * third:] > -500) & (values[2 * third:] < 500)] = 4
    labels[values > 700] = 5
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out


def main() -> int:
    from bench_import import make_series, warm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-seg-"))
    try:
        series = work / "series"
        print(f"generating 512x512x{args.slices} CT series in {series}", file=sys.stderr)
        make_series(series, args.slices)
        warm(series)
        from MedAnalysisLib.core import dicom_seg
        from MedAnalysisLib.core.imageio import read_image  # noqa: F401 (warm imports)
        from MedAnalysisLib.core.dicom_import import ImportSession

        with ImportSession(series) as session:
            image = session.load(session.planned()[0])[0].image
        labels = five_labels(image)
        label_path = work / "labels.nii.gz"
        sitk.WriteImage(labels, str(label_path))

        env = dict(os.environ, PYTHONPATH=str(REPO))
        ours, cpu, peaks = [], [], []
        for run in range(args.runs):
            out = work / f"out{run}"
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run(["/usr/bin/time", "-o", str(work / "peak"), "-f", "%M", sys.executable, "-m",
                            "MedAnalysisLib.cli", "export-dicom", str(label_path), "--reference", str(series),
                            "-o", str(out)], check=True, env=env, capture_output=True)
            ours.append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            peaks.append(int((work / "peak").read_text().split()[-1]) / 1024)
            print(f"run {run + 1}: export-dicom {ours[-1]:.2f} s", file=sys.stderr)

        # in-process steps
        steps = {}
        started = time.perf_counter()
        reference = dicom_seg.read_reference_series(series)
        steps["read_reference_s"] = time.perf_counter() - started
        started = time.perf_counter()
        frames = dicom_seg.frames_on_source(labels, reference)
        steps["sample_frames_s"] = time.perf_counter() - started
        started = time.perf_counter()
        seg, _, sources = dicom_seg.build_segmentation(labels, [], reference, "labels")
        steps["build_incl_sampling_s"] = time.perf_counter() - started
        started = time.perf_counter()
        seg.save_as(work / "inproc.dcm", enforce_file_format=True)
        steps["write_s"] = time.perf_counter() - started

        # peer: highdicom alone, frames and headers ready
        import highdicom as hd
        from pydicom.sr.codedict import codes

        descriptions = [hd.seg.SegmentDescription(
            segment_number=n, segment_label=f"label {n}",
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
            algorithm_type="MANUAL") for n in range(1, 6)]
        peer = []
        for run in range(args.runs):
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plain = hd.seg.Segmentation(
                    source_images=sources, pixel_array=frames.astype(np.uint8), segmentation_type="BINARY",
                    segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=99,
                    sop_instance_uid=hd.UID(), instance_number=1, manufacturer="bench",
                    manufacturer_model_name="bench", software_versions="0", device_serial_number="0")
                plain.save_as(work / f"peer{run}.dcm", enforce_file_format=True)
            peer.append(time.perf_counter() - started)
        result = {
            "series": {"size": [512, 512, args.slices], "files": len(list(series.iterdir())), "labels": 5},
            "seg_frames": int(seg.NumberOfFrames), "seg_bytes": (work / "out0" / "seg.dcm").stat().st_size,
            "export_dicom_s": round(statistics.median(ours), 3), "export_dicom_runs_s": [round(v, 3) for v in ours],
            "export_dicom_cpu_s": round(statistics.median(cpu), 3),
            "export_dicom_peak_mb": round(max(peaks), 1),
            "in_process_steps_s": {k: round(v, 3) for k, v in steps.items()},
            "highdicom_alone_s": round(statistics.median(peer), 3),
            "ratio": round(statistics.median(ours) / statistics.median(peer), 3),
            "cpu_count": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
