"""``medanalysis brain-mask IN -o MASK``: deepbet brain extraction, a 0/1 mask on the input grid."""

from __future__ import annotations

from ..cli import EXIT_OK, StderrProgress, emit


def register(add) -> None:
    parser = add("brain-mask", run, "brain extraction (skull stripping) with a real-data-trained network")
    parser.add_argument("input", metavar="IN")
    parser.add_argument("-o", "--output", required=True, metavar="MASK",
                        help="0/1 labelmap on the input grid (.nii.gz, .nrrd, ...) or .seg.nrrd (segment 'Brain')")
    parser.add_argument("--masked-output", metavar="F", help="also write the input with the non-brain voxels removed")
    from ..core.brain_parameters import BrainExtractionParameters  # light: the parser is built for every command
    from ..core.parameters import add_arguments

    add_arguments(parser, BrainExtractionParameters)  # device, threshold


def run(args) -> int:
    from ..core.parameters import from_namespace
    from ..logic.brainlogic import BrainExtractionParameters
    from ..workflows import brainMaskFile

    parameters = from_namespace(BrainExtractionParameters, args, maskedVolume=bool(args.masked_output))
    summary = brainMaskFile(args.input, args.output, parameters, args.masked_output, progress=StderrProgress(args.json))
    emit(summary, args.json, lambda r: "\n".join(
        [f"brain mask of {r['input']}: {r['brain_volume_ml']} mL on {r['device']}",
         *(f"  wrote {v}" for v in r["outputs"].values()), f"  {r['seconds']['total']} s"]))
    return EXIT_OK
