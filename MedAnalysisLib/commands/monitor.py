"""``medanalysis monitor BASELINE FOLLOWUP -o REPORT_DIR``: lesion change between two time points."""

from __future__ import annotations

import time

from ..cli import EXIT_OK, StderrProgress, emit


def register(add) -> None:
    parser = add("monitor", run, "detect lesions at baseline and follow-up, match them and report the change")
    parser.add_argument("baseline", metavar="BASELINE")
    parser.add_argument("followup", metavar="FOLLOWUP")
    parser.add_argument("-o", "--output", required=True, metavar="REPORT_DIR")
    parser.add_argument("--baseline-seg", metavar="S", help=".seg.nrrd (segment 'Lesion') or a lesion mask "
                                                            "labelmap (every non-zero voxel is lesion)")
    parser.add_argument("--followup-seg", metavar="S")
    from ..core.monitoring_parameters import MonitoringParameters  # light: the parser is built for every command
    from ..core.parameters import add_arguments

    add_arguments(parser, MonitoringParameters)  # thresholds and workflow settings, from their one declaration


def run(args) -> int:
    from .. import mrml
    from ..core.imageio import check_output_paths
    from ..core.parameters import from_namespace
    from ..logic.monitoringlogic import MonitoringLogic, MonitoringParameters

    started = time.perf_counter()
    parameters = from_namespace(MonitoringParameters, args)
    parameters.validate()
    check_output_paths([args.baseline, args.followup, args.baseline_seg, args.followup_seg], [],
                       folder_outputs=[args.output])
    scene = mrml.newScene()
    baseline = mrml.loadVolumeNode(args.baseline, scene, name="baseline")
    followup = mrml.loadVolumeNode(args.followup, scene, name="followup")
    baselineSeg = (mrml.loadSegmentationOrMask(args.baseline_seg, scene, parameters.lesionSegmentName)
                   if args.baseline_seg else None)
    followupSeg = (mrml.loadSegmentationOrMask(args.followup_seg, scene, parameters.lesionSegmentName)
                   if args.followup_seg else None)
    outputs = MonitoringLogic(scene).monitor(baseline, followup, parameters, baselineSeg, followupSeg,
                                             reportDir=args.output, progress=StderrProgress(args.json))
    result = {**outputs.result, "report": str(outputs.reportPath),
              "seconds": {**outputs.seconds, "total": round(time.perf_counter() - started, 3)}}

    def human(r):
        s = r["summary"]
        counts = ", ".join(f"{v} {k}" for k, v in s["counts"].items())
        lines = [f"lesions: {s['lesions_baseline']} at baseline, {s['lesions_followup']} at follow-up ({counts})",
                 f"burden: {s['burden_baseline_ml']:.3f} -> {s['burden_followup_ml']:.3f} mL "
                 f"({s['burden_change_ml']:+.3f} mL)"]
        if not r["lesions"]:
            lines.append("no lesions found in either time point")
        lines += [f"warning: {w}" for w in r.get("warnings", [])]
        lines.append(f"report: {r['report']}")
        return "\n".join(lines)

    emit(result, args.json, human)
    return EXIT_OK
