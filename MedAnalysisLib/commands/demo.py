"""``medanalysis demo``: the main job on the bundled sample, offline."""

from __future__ import annotations

from .. import RESEARCH_USE_NOTICE
from ..cli import EXIT_INTERNAL, EXIT_OK, StderrProgress, emit


def register(add) -> None:
    parser = add("demo", run, "run the main job on the bundled sample, offline")
    parser.add_argument("-o", "--output", default="demo-output", help="output folder (default: demo-output)")


def run(args) -> int:
    from ..demo import runDemo

    result = runDemo(args.output, progress=StderrProgress(args.json))

    def human(r):
        lines = ["MedAnalysis demo: MNI ICBM152 sample through the headless MRML bridge",
                 f"  round trip volume: voxels identical={r['round_trip']['voxels_identical']}, "
                 f"geometry identical={r['round_trip']['geometry_identical']}",
                 f"  round trip segmentation: labels identical={r['round_trip']['labels_identical']}",
                 "  tissue volumes: " + ", ".join(f"{k} {v} mL" for k, v in r["tissue_volumes_ml"].items()),
                 *(f"  wrote {path}" for path in r["outputs"].values()),
                 f"  {r['seconds']} s", RESEARCH_USE_NOTICE]
        return "\n".join(lines)

    emit(result, args.json, human)
    return EXIT_OK if all(result["round_trip"].values()) else EXIT_INTERNAL
