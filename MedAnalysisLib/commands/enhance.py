"""``medanalysis enhance IN -o OUT``: denoising, bias-field correction, normalization, CLAHE,
resampling, as one pipeline (presets or individual steps)."""

from __future__ import annotations

from ..cli import EXIT_OK, StderrProgress, emit


def register(add) -> None:
    from ..core.enhance import EnhancementParameters
    from ..core.parameters import add_arguments

    parser = add("enhance", run, "denoise, correct bias field, normalize, enhance contrast, resample")
    parser.add_argument("input", nargs="?", metavar="IN")
    parser.add_argument("-o", "--output", metavar="OUT")
    parser.add_argument("--list-presets", action="store_true", help="list presets and exit")
    parser.add_argument("--bias-field-output", metavar="F", help="also write the multiplicative bias field")
    parser.add_argument("--reference", metavar="REF", help="reference volume for --normalize histmatch")
    parser.add_argument("--mask", metavar="MASK", help="foreground mask: labelmap file or .seg.nrrd")
    add_arguments(parser, EnhancementParameters)  # every pipeline setting, from its one declaration


def run(args) -> int:
    from ..core.enhance import PRESETS, EnhancementParameters
    from ..core.errors import InputError
    from ..core.parameters import from_namespace
    from ..workflows import enhanceFile

    if args.list_presets:
        emit({"presets": {k: v["description"] for k, v in PRESETS.items()}}, args.json,
             lambda r: "\n".join(f"{k:16s} {v}" for k, v in r["presets"].items()))
        return EXIT_OK
    if not args.input or not args.output:
        raise InputError(None, "enhance needs IN and -o OUT")
    parameters = from_namespace(EnhancementParameters, args)
    result = enhanceFile(args.input, args.output, parameters, maskPath=args.mask, referencePath=args.reference,
                         biasFieldPath=args.bias_field_output, progress=StderrProgress(args.json))
    emit(result, args.json, lambda r: "\n".join([f"enhanced {r['input']}: {' -> '.join(r['steps'])}",
                                                 *(f"  wrote {v}" for v in r["outputs"].values()),
                                                 f"  {r['seconds']['total']} s"]))
    return EXIT_OK
