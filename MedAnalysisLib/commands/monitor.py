"""``medanalysis monitor BASELINE FOLLOWUP -o REPORT_DIR``: lesion change between two time points."""

from __future__ import annotations

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
    from ..core.parameters import from_namespace
    from ..logic.monitoringlogic import MonitoringParameters
    from ..workflows import monitorFiles

    parameters = from_namespace(MonitoringParameters, args)
    result = monitorFiles(args.baseline, args.followup, args.output, parameters, args.baseline_seg,
                          args.followup_seg, progress=StderrProgress(args.json))

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
