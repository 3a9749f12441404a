"""``medanalysis segment IN -o SEG``: deep-learning segmentation into a .seg.nrrd or labelmap."""

from __future__ import annotations

from ..cli import EXIT_OK, StderrProgress, emit


def register(add) -> None:
    parser = add("segment", run, "segment a volume with the default or your own MONAI model")
    parser.add_argument("input", metavar="IN")
    parser.add_argument("-o", "--output", required=True, metavar="SEG", help=".seg.nrrd (segments) or a labelmap file")
    parser.add_argument("--probabilities", metavar="DIR", help="also write per-class probability maps here")
    parser.add_argument("--brain-mask", default="auto", metavar="auto|off|MASK",
                        help="auto: extract the brain first (deepbet) and segment inside it; MASK: a brain mask "
                             "file (labelmap or .seg.nrrd, e.g. from `medanalysis brain-mask`); off: the model alone")
    from ..core.parameters import add_arguments
    from ..core.segment.parameters import SegmentationParameters  # light: the parser is built for every command

    add_arguments(parser, SegmentationParameters)  # model, device, tta, trusted, threads, lesion rules, refine


def run(args) -> int:
    from ..core.parameters import from_namespace
    from ..logic.segmentationlogic import SegmentationParameters
    from ..workflows import segmentFile

    maskArgument = args.brain_mask if args.brain_mask not in ("auto", "off") else None
    parameters = from_namespace(SegmentationParameters, args, probabilities=bool(args.probabilities),
                                brainMask=args.brain_mask if args.brain_mask in ("auto", "off") else "off")
    result = segmentFile(args.input, args.output, parameters, brainMaskPath=maskArgument,
                         probabilitiesDir=args.probabilities, progress=StderrProgress(args.json))
    emit(result, args.json, lambda r: "\n".join(
        [f"segmented {r['input']} with {r['model']} on {r['device']}: " + ", ".join(s["name"] for s in r["segments"]),
         *(f"  wrote {v}" for v in r["outputs"].values()), *r["messages"], f"  {r['seconds']['total']} s"]))
    return EXIT_OK
