"""``medanalysis demo``: the main job on the bundled sample pair, offline."""

from __future__ import annotations

from .. import RESEARCH_USE_NOTICE
from ..cli import EXIT_OK, StderrProgress, emit


def register(add) -> None:
    parser = add("demo", run, "run the whole pipeline on the bundled sample pair, offline")
    parser.add_argument("-o", "--output", default="demo-output", help="output folder (default: demo-output)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def run(args) -> int:
    from ..demo import runDemo

    result = runDemo(args.output, progress=StderrProgress(args.json), device=args.device)

    def human(r):
        s, check = r["summary"], r["ground_truth_check"]
        counts = ", ".join(f"{v} {k}" for k, v in s["counts"].items())
        steps = ", ".join(f"{k} {v} s" for k, v in r["seconds"].items() if k != "total")
        return "\n".join([
            "MedAnalysis demo: import -> enhance -> register -> segment -> detect -> monitor (sample pair)",
            f"  lesions: {s['lesions_baseline']} at baseline, {s['lesions_followup']} at follow-up ({counts})",
            f"  lesion burden: {s['burden_baseline_ml']:.2f} -> {s['burden_followup_ml']:.2f} mL "
            f"({s['burden_change_ml']:+.2f} mL)",
            f"  against the sample's ground truth: {check['found']}/{check['truth_lesions']} lesions found, "
            f"{check['status_correct']} with the right status, {check['extra_detections']} extra detection(s)",
            f"  report: {r['report']}", f"  time: {r['seconds']['total']} s ({steps})", RESEARCH_USE_NOTICE])

    emit(result, args.json, human)
    return EXIT_OK
