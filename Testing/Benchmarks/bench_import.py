"""Benchmark: DICOM series import, ``medanalysis import`` against ``dcm2niix``.

The same 512x512x500 int16 CT-like series (RescaleIntercept -1024, file names shuffled),
warm page cache, both tools as fresh processes writing uncompressed NIfTI
(``dcm2niix -z n -b n`` vs ``medanalysis import SERIES -o x.nii``), interleaved, median of
``--runs`` runs each. Prints one JSON object: both medians, the ratio (ours / dcm2niix; goal
<= 1.5), the in-process load time (scan + load, no file written, no interpreter start-up),
and whether the outputs are voxel-identical once both are brought to the same (RAS+)
voxel order with nibabel (dcm2niix flips rows for a right-handed NIfTI; ITK keeps DICOM's
order and writes the LPS->RAS affine).

Wall time is the goal's measure; CPU time (user + system, from the children's rusage) is
printed too because it is steadier than wall time on a shared machine.

Usage: python Testing/Benchmarks/bench_import.py [--series DIR] [--slices 500] [--runs 3] [--keep]
Without dcm2niix on PATH (``apt-get install -y dcm2niix``) the peer is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "Testing" / "Python"))


def make_series(folder: Path, slices: int) -> None:
    from helpers.dicomgen import phantom_volume, write_slices

    volume = phantom_volume((slices, 512, 512))
    stored = (volume.astype(np.int32) + 1024).astype(np.int16)
    positions = [(-250.0, -250.0, -300.0 + 0.625 * k) for k in range(slices)]
    write_slices(folder, list(stored), positions, [1, 0, 0, 0, 1, 0], (0.9765625, 0.9765625),
                 rng=np.random.default_rng(5), instance_numbers=list(range(1, slices + 1)), modality="CT",
                 slope=1.0, intercept=-1024.0, thickness=0.625)


def warm(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass


def timed(command: list, env: dict) -> tuple:
    """(wall seconds, CPU seconds (user + system) of the child, completed process)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-800:]}")
    return seconds, cpu, result


def canonical(path: Path) -> tuple:
    """(array scaled to real values, RAS affine) in the closest-canonical (RAS+) voxel order."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(image.dataobj, dtype=np.float64), image.affine


def in_process_load(series: Path, runs: int) -> float:
    from MedAnalysisLib.core.dicom_import import ImportSession

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with ImportSession(series) as session:
            for item in session.selected():
                session.load(item)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=Path, help="existing series folder (default: generate one)")
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-import-"))
    try:
        series = args.series
        if series is None:
            series = work / "series"
            print(f"generating 512x512x{args.slices} int16 series in {series}", file=sys.stderr)
            make_series(series, args.slices)
        warm(series)
        # As an installed package would be: byte-compiled (this environment may not write .pyc itself).
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "MedAnalysisLib")], check=False)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        peer = shutil.which("dcm2niix")
        if peer is None:
            print("dcm2niix not found on PATH (apt-get install -y dcm2niix): timing medanalysis only",
                  file=sys.stderr)
        ours_times, peer_times, ours_cpu, peer_cpu = [], [], [], []
        for run in range(args.runs):
            out = work / f"ours{run}.nii"
            seconds, cpu, _ = timed([sys.executable, "-m", "MedAnalysisLib.cli", "import", str(series), "-o", str(out),
                                     "--json"], env)
            ours_times.append(seconds)
            ours_cpu.append(cpu)
            if peer:
                seconds, cpu, _ = timed([peer, "-z", "n", "-b", "n", "-o", str(work), "-f", f"peer{run}", str(series)],
                                        env)
                peer_times.append(seconds)
                peer_cpu.append(cpu)
            print(f"run {run + 1}: medanalysis {ours_times[-1]:.3f} s (cpu {ours_cpu[-1]:.3f})"
                  + (f", dcm2niix {peer_times[-1]:.3f} s (cpu {peer_cpu[-1]:.3f})" if peer else ""), file=sys.stderr)
        result = {
            "series": {"size": [512, 512, args.slices], "type": "int16", "files": len(list(series.iterdir()))},
            "runs": args.runs,
            "medanalysis_import_s": round(statistics.median(ours_times), 3),
            "medanalysis_runs_s": [round(t, 3) for t in ours_times],
            "medanalysis_cpu_s": round(statistics.median(ours_cpu), 3),
            "in_process_load_s": round(in_process_load(series, args.runs), 3),
        }
        if peer:
            ours, ours_affine = canonical(work / "ours0.nii")
            theirs, their_affine = canonical(work / "peer0.nii")
            identical = ours.shape == theirs.shape and bool(np.array_equal(ours, theirs))
            result.update({
                "dcm2niix_s": round(statistics.median(peer_times), 3),
                "dcm2niix_runs_s": [round(t, 3) for t in peer_times],
                "ratio": round(statistics.median(ours_times) / statistics.median(peer_times), 3),
                "dcm2niix_cpu_s": round(statistics.median(peer_cpu), 3),
                "cpu_ratio": round(statistics.median(ours_cpu) / statistics.median(peer_cpu), 3),
                "goal_ratio": 1.5,
                "voxels_identical": identical,
                "max_abs_difference": None if ours.shape != theirs.shape else float(np.max(np.abs(ours - theirs))),
                "affine_max_difference_mm": float(np.max(np.abs(ours_affine - their_affine))),
                "dcm2niix_version": subprocess.run([peer, "-v"], capture_output=True, text=True).stdout.strip()
                .splitlines()[-1],
            })
        else:
            result["dcm2niix"] = "not found: peer skipped"
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
