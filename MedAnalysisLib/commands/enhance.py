"""``medanalysis enhance IN -o OUT``: denoising, bias-field correction, normalization, CLAHE,
resampling, as one pipeline (presets or individual steps)."""

from __future__ import annotations

import time

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
    from .. import mrml
    from ..core.enhance import PRESETS, EnhancementParameters
    from ..core.errors import InputError
    from ..core.imageio import IMAGE_SUFFIXES, check_output_paths, write_image
    from ..core.parameters import from_namespace
    from ..core.progress import output_suffix
    from ..logic.enhancementlogic import EnhancementLogic

    if args.list_presets:
        emit({"presets": {k: v["description"] for k, v in PRESETS.items()}}, args.json,
             lambda r: "\n".join(f"{k:16s} {v}" for k, v in r["presets"].items()))
        return EXIT_OK
    if not args.input or not args.output:
        raise InputError(None, "enhance needs IN and -o OUT")
    for path in (args.output, args.bias_field_output):
        if path and output_suffix(path) not in IMAGE_SUFFIXES:
            raise InputError(path, f"unsupported output extension '{output_suffix(path)}'")
    parameters = from_namespace(EnhancementParameters, args)
    parameters.with_preset().validate()
    check_output_paths([args.input, args.mask, args.reference], [args.output, args.bias_field_output])
    if args.bias_field_output and not parameters.with_preset().bias_correct:
        raise InputError("--bias-field-output", "no bias field without bias correction: add --bias-correct")
    started = time.perf_counter()
    scene = mrml.newScene()
    inputNode = mrml.loadVolumeNode(args.input, scene, name="input")
    maskNode = None
    if args.mask:
        maskNode = (mrml.loadSegmentation(args.mask, scene) if args.mask.lower().endswith(".seg.nrrd")
                    else mrml.loadVolumeNode(args.mask, scene, name="mask", labelmap=True))
    referenceNode = mrml.loadVolumeNode(args.reference, scene, name="reference") if args.reference else None
    logic = EnhancementLogic(scene)
    outputs = logic.enhance(inputNode, parameters, maskNode=maskNode, referenceVolumeNode=referenceNode,
                            biasFieldOutput=bool(args.bias_field_output), progress=StderrProgress(args.json))
    record = mrml.getProvenance(outputs.outputVolumeNode)
    written = {"output": str(write_image(mrml.imageFromVolumeNode(outputs.outputVolumeNode), args.output,
                                         provenance=record))}
    if args.bias_field_output:
        if outputs.biasFieldNode is None:
            raise InputError("--bias-field-output", "no bias field: add --bias-correct")
        written["bias_field"] = str(write_image(mrml.imageFromVolumeNode(outputs.biasFieldNode),
                                                args.bias_field_output, provenance=record))
    result = {"operation": "enhance", "input": args.input, "outputs": written, "steps": outputs.steps,
              "seconds": {**outputs.seconds, "total": round(time.perf_counter() - started, 3)},
              "parameters": record["parameters"]}
    emit(result, args.json, lambda r: "\n".join([f"enhanced {r['input']}: {' -> '.join(r['steps'])}",
                                                 *(f"  wrote {v}" for v in r["outputs"].values()),
                                                 f"  {r['seconds']['total']} s"]))
    return EXIT_OK
