"""Benchmark: MedAnalysis registration vs elastix (Debian package, 5.0.1) on the same inputs.

Cases (a) rigid, (b) affine and (c) deformable from Testing/Python/helpers/registration_cases.py, at
full resolution (1 mm, 197 x 233 x 189), each engine run ``--repeat`` times, interleaved so both see the
same machine load; both sample at random, so repetition r uses the seed 20261125 + 1000 r for both
(elastix: ``RandomSeed``). Prints one JSON object: per case both times (median wall seconds from the
image files to a written transform, and CPU seconds), the ratio ours / elastix, and both target
registration errors (mean and max over 1,000 brain points, averaged over the repetitions).

Equal work (also stated in the output): the elastix parameter files are generated from our preset
stages: same stages and transforms, same number of pyramid levels and shrink schedule, same
histogram bins (32), same B-spline grid spacing and schedule, centre-of-gravity initialization
(= our ``moments``), 2 threads each. Linear stages: the same maximum iterations and samples per
iteration (elastix draws new random samples every iteration, ours keep one set per level). B-spline:
elastix keeps its standard stochastic setting (250 iterations x 2,048 new samples per level); ours
runs L-BFGS on a fixed lattice (20k/40k/80k samples, at most 50/50/30 iterations).
Ours is timed in-process from reading the two files to writing the transform; the PyTorch
import that the first B-spline run of a process pays (about 1.5 s) is reported separately. Giving elastix our
lattice sizes at our iteration caps was measured slower (78 s) and less accurate (0.41 mm).

Ours is timed in-process from reading the two files to writing the transform. The B-spline stage
runs in PyTorch; the one-time ``import torch`` of a fresh process (measured and reported as
``torch_import_s``) is done before the timed runs, as in a batch or a Slicer session.

Usage: python Testing/Benchmarks/bench_register.py [--repeat 3] [--cases rigid,affine,deformable]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "Testing" / "Python")]

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from MedAnalysisLib.core import register as reg  # noqa: E402
from helpers.registration_cases import make_case  # noqa: E402

PRESET_OF = {"rigid": "rigid", "affine": "affine", "deformable": "bspline"}
THREADS = 2
ELASTIX_BSPLINE = {"iterations": 250, "samples": 2048}
GOALS = {"rigid": 0.5, "affine": 0.5, "deformable": 1.0}
SEED = 20261125


def elastix_parameters(stage: dict, first: bool) -> str:
    """An elastix parameter file doing the same work as one of our stages."""
    levels = len(stage["shrink_factors"])
    transform = {"rigid": "EulerTransform", "affine": "AffineTransform",
                 "bspline": "BSplineTransform"}[stage["transform"]]
    schedule = " ".join(str(int(f)) for f in stage["shrink_factors"] for _ in range(3))
    if stage["transform"] == "bspline":
        iterations = [ELASTIX_BSPLINE["iterations"]] * levels
        samples = [ELASTIX_BSPLINE["samples"]] * levels
    else:
        iterations, samples = stage["iterations"], stage["samples"]
    lines = [
        '(FixedInternalImagePixelType "float")', '(MovingInternalImagePixelType "float")',
        "(FixedImageDimension 3)", "(MovingImageDimension 3)", '(UseDirectionCosines "true")',
        '(Registration "MultiResolutionRegistration")', '(Interpolator "LinearInterpolator")',
        '(ResampleInterpolator "FinalBSplineInterpolator")', "(FinalBSplineInterpolationOrder 1)",
        '(Resampler "DefaultResampler")', '(FixedImagePyramid "FixedRecursiveImagePyramid")',
        '(MovingImagePyramid "MovingRecursiveImagePyramid")', f"(NumberOfResolutions {levels})",
        f"(ImagePyramidSchedule {schedule})", '(Optimizer "AdaptiveStochasticGradientDescent")',
        f'(Transform "{transform}")', '(Metric "AdvancedMattesMutualInformation")',
        f"(NumberOfHistogramBins {int(stage['histogram_bins'])})", '(AutomaticScalesEstimation "true")',
        '(HowToCombineTransforms "Compose")', f"(MaximumNumberOfIterations {' '.join(map(str, iterations))})",
        f"(NumberOfSpatialSamples {' '.join(map(str, samples))})", '(NewSamplesEveryIteration "true")',
        '(ImageSampler "RandomCoordinate")', "(DefaultPixelValue 0)", '(WriteResultImage "false")',
    ]
    if first:
        lines += ['(AutomaticTransformInitialization "true")',
                  '(AutomaticTransformInitializationMethod "CenterOfGravity")']
    if stage["transform"] == "bspline":
        grid = " ".join(str(int(s)) for s in stage["grid_schedule"] for _ in range(3))
        lines += [f"(FinalGridSpacingInPhysicalUnits {float(stage['grid_spacing_mm'])})",
                  f"(GridSpacingSchedule {grid})"]
    return "\n".join(lines) + "\n"


def equal_work(stages: list) -> list:
    described = []
    for stage in stages:
        entry = {"transform": stage["transform"], "levels": len(stage["shrink_factors"]),
                 "shrink_factors": stage["shrink_factors"], "histogram_bins": stage["histogram_bins"],
                 "ours": {"max_iterations": stage["iterations"], "samples_per_iteration": stage["samples"],
                          "optimizer": [o["name"] for o in stage["optimizer"]] if isinstance(stage["optimizer"], list)
                          else stage["optimizer"]["name"], "samples": "one set per level",
                          "smoothing_sigmas_mm": stage["smoothing_sigmas_mm"]},
                 "elastix": {"optimizer": "AdaptiveStochasticGradientDescent", "samples": "new every iteration",
                             "smoothing": "recursive pyramid, sigma = shrink / 2 voxels"}}
        if stage["transform"] == "bspline":
            entry["grid_spacing_mm"] = stage["grid_spacing_mm"]
            entry["grid_schedule"] = stage["grid_schedule"]
            entry["elastix"].update(max_iterations=[ELASTIX_BSPLINE["iterations"]] * entry["levels"],
                                    samples_per_iteration=[ELASTIX_BSPLINE["samples"]] * entry["levels"])
        else:
            entry["elastix"].update(max_iterations=stage["iterations"], samples_per_iteration=stage["samples"])
        described.append(entry)
    return described


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ours(fixed_path: Path, moving_path: Path, preset: str, out: Path, seed: int) -> tuple:
    started, cpu = time.perf_counter(), time.process_time()
    fixed = sitk.ReadImage(str(fixed_path))
    moving = sitk.ReadImage(str(moving_path))
    result = reg.register_images(fixed, moving, reg.RegistrationParameters(preset=preset, threads=THREADS, seed=seed))
    reg.write_transform(result.transform, out)
    return time.perf_counter() - started, time.process_time() - cpu, result


def run_elastix(fixed_path: Path, moving_path: Path, parameter_files: list, out: Path) -> tuple:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = ["elastix", "-f", str(fixed_path), "-m", str(moving_path), "-out", str(out), "-threads", str(THREADS)]
    for path in parameter_files:
        command += ["-p", str(path)]
    started, cpu = time.perf_counter(), children_cpu()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds, cpu_seconds = time.perf_counter() - started, children_cpu() - cpu
    if completed.returncode != 0:
        raise RuntimeError(f"elastix failed: see {out / 'elastix.log'}")
    return seconds, cpu_seconds, out / f"TransformParameters.{len(parameter_files) - 1}.txt"


def elastix_tre(case, transform_parameters: Path, folder: Path) -> dict:
    fixed_points = np.array([case.moving_to_fixed.TransformPoint(tuple(p)) for p in case.points_moving_lps])
    points_file = folder / "points.txt"
    points_file.write_text("point\n%d\n" % len(fixed_points) + "".join("%.6f %.6f %.6f\n" % tuple(p)
                                                                       for p in fixed_points))
    subprocess.run(["transformix", "-def", str(points_file), "-out", str(folder), "-tp", str(transform_parameters)],
                   check=True, capture_output=True)
    mapped = [[float(v) for v in re.search(r"OutputPoint = \[ ([^\]]+) \]", line).group(1).split()]
              for line in (folder / "outputpoints.txt").read_text().splitlines() if "OutputPoint" in line]
    errors = np.linalg.norm(np.array(mapped) - case.points_moving_lps, axis=1)
    return {"mean_mm": round(float(errors.mean()), 4), "max_mm": round(float(errors.max()), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="rigid,affine,deformable")
    args = parser.parse_args()
    if shutil.which("elastix") is None or shutil.which("transformix") is None:
        print(json.dumps({"error": "elastix/transformix not found (apt-get install elastix)"}))
        return 2
    version = subprocess.run(["elastix", "--version"], capture_output=True, text=True).stdout.strip()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_import_s = time.perf_counter() - started
    importlib.import_module("torch")  # outside the timed runs, see the module docstring

    report = {"benchmark": "registration: MedAnalysis vs elastix", "elastix": version, "threads": THREADS,
              "repeat": args.repeat, "torch_import_s": round(torch_import_s, 3),
              "load_average_start": os.getloadavg(), "cases": {}}
    with tempfile.TemporaryDirectory(prefix="bench_register_") as folder:
        folder = Path(folder)
        for name in args.cases.split(","):
            case = make_case(name, 1.0)
            fixed_path, moving_path = folder / f"{name}_fixed.nii", folder / f"{name}_moving.nii"
            sitk.WriteImage(case.fixed, str(fixed_path))
            sitk.WriteImage(case.moving, str(moving_path))
            stages = reg.RegistrationParameters(preset=PRESET_OF[name]).stages()
            ours_runs, elastix_runs = [], []
            for repetition in range(args.repeat):
                # both engines draw random samples: each repetition uses another seed for both
                seed = SEED + 1000 * repetition
                parameter_files = []
                for index, stage in enumerate(stages):
                    path = folder / f"{name}_stage{index}.txt"
                    path.write_text(elastix_parameters(stage, first=index == 0) + f"(RandomSeed {seed})\n")
                    parameter_files.append(path)
                transform_path = folder / f"{name}_ours{'.tfm' if name != 'deformable' else '.h5'}"
                seconds, cpu, result = run_ours(fixed_path, moving_path, PRESET_OF[name], transform_path, seed)
                ours_runs.append({"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                                  "tre": case.tre_summary(result.transform)})
                seconds, cpu, parameters = run_elastix(fixed_path, moving_path, parameter_files, folder / f"{name}_elx")
                elastix_runs.append({"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                                     "tre": elastix_tre(case, parameters, folder / f"{name}_elx")})
                print(f"{name} run {repetition + 1}: ours {ours_runs[-1]}, elastix {elastix_runs[-1]}", file=sys.stderr)
            ours_s = statistics.median(r["seconds"] for r in ours_runs)
            elastix_s = statistics.median(r["seconds"] for r in elastix_runs)
            ours_tre = {key: round(statistics.mean(r["tre"][key] for r in ours_runs), 4)
                        for key in ("mean_mm", "max_mm")}
            elastix_tre_median = {key: round(statistics.mean(r["tre"][key] for r in elastix_runs), 4)
                                  for key in ("mean_mm", "max_mm")}
            ratio = ours_s / elastix_s
            tre_goal = (ours_tre["mean_mm"] <= elastix_tre_median["mean_mm"] if name != "deformable"
                        else ours_tre["mean_mm"] <= 1.0)
            report["cases"][name] = {
                "preset": PRESET_OF[name], "equal_work": equal_work(stages),
                "ours_s": round(ours_s, 3), "elastix_s": round(elastix_s, 3), "ratio": round(ratio, 3),
                "ours_cpu_s": round(statistics.median(r["cpu_seconds"] for r in ours_runs), 3),
                "elastix_cpu_s": round(statistics.median(r["cpu_seconds"] for r in elastix_runs), 3),
                "ours_tre": ours_tre, "elastix_tre": elastix_tre_median,
                "initial_tre": case.initial_tre_summary(),
                "goal": {"max_ratio": GOALS[name], "ratio_met": ratio <= GOALS[name], "tre_met": tre_goal},
                "runs": {"ours": ours_runs, "elastix": elastix_runs},
            }
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
