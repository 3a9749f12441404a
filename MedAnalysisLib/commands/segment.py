"""``medanalysis segment IN -o SEG``: deep-learning segmentation into a .seg.nrrd or labelmap."""

from __future__ import annotations

import json
import time
from pathlib import Path

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
    from .. import mrml
    from ..core import geometry
    from ..core.errors import InputError
    from ..core.imageio import IMAGE_SUFFIXES, check_output_paths, write_image
    from ..core.progress import atomic_output, output_suffix
    from ..core.provenance import sidecar_path
    from ..core.parameters import from_namespace
    from ..logic.segmentationlogic import SegmentationLogic, SegmentationParameters

    suffix = output_suffix(args.output)
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(args.output, f"unsupported output extension '{suffix}' (use .seg.nrrd or a labelmap format)")
    maskArgument = args.brain_mask if args.brain_mask not in ("auto", "off") else None
    check_output_paths([args.input, maskArgument], [args.output], folder_outputs=[args.probabilities])
    if args.probabilities and Path(args.probabilities).exists() and not Path(args.probabilities).is_dir():
        raise InputError(args.probabilities, "--probabilities must name a folder, not an existing file")
    started = time.perf_counter()
    parameters = from_namespace(SegmentationParameters, args, probabilities=bool(args.probabilities),
                                brainMask=args.brain_mask if args.brain_mask in ("auto", "off") else "off")
    parameters.validate()
    scene = mrml.newScene()
    inputNode = mrml.loadVolumeNode(args.input, scene, name=Path(args.input).name.split(".")[0])
    brainMaskNode = None
    if args.brain_mask not in ("auto", "off"):
        brainMaskNode = (mrml.loadSegmentation(args.brain_mask, scene) if output_suffix(args.brain_mask) == ".seg.nrrd"
                         else mrml.loadVolumeNode(args.brain_mask, scene, name="brain_mask", labelmap=True))
    outputs = SegmentationLogic(scene).segment(inputNode, parameters, progress=StderrProgress(args.json),
                                               brainMaskNode=brainMaskNode)
    record = mrml.getProvenance(outputs.segmentationNode)
    record["segments"] = [spec.to_dict() for spec in mrml.segmentSpecs(outputs.segmentationNode)]  # for labelmaps
    if suffix == ".seg.nrrd":
        mrml.saveSegmentation(outputs.segmentationNode, args.output)
        with atomic_output(sidecar_path(args.output)) as tmp:
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    else:
        labels = mrml.labelmapFromSegmentationNode(outputs.segmentationNode,
                                                   referenceImage=mrml.imageFromVolumeNode(inputNode))
        write_image(labels, args.output, provenance=record)
    written = {"segmentation": str(args.output)}
    if outputs.probabilityNode is not None:
        probabilities = mrml.imageFromVolumeNode(outputs.probabilityNode)
        folder = Path(args.probabilities)
        names = ["background"] + [s.name for s in mrml.segmentSpecs(outputs.segmentationNode)]
        for index in range(probabilities.GetNumberOfComponentsPerPixel()):
            name = names[index] if index < len(names) else f"class_{index}"
            path = folder / f"probability_{index}_{name.lower().replace(' ', '_')}.nii.gz"
            write_image(geometry.image_from_array(
                geometry.array_view(probabilities)[..., index].copy(), reference=probabilities), path)
            written[f"probability_{index}"] = str(path)
    segments = [{"label": s.label, "name": s.name} for s in mrml.segmentSpecs(outputs.segmentationNode)]
    result = {"operation": "segment", "input": args.input, "model": outputs.modelName,
              "model_sha256": outputs.modelSha256, "device": outputs.device, "segments": segments,
              "outputs": written, "messages": outputs.messages,
              "seconds": {**outputs.seconds, "total": round(time.perf_counter() - started, 3)}}
    emit(result, args.json, lambda r: "\n".join(
        [f"segmented {r['input']} with {r['model']} on {r['device']}: " + ", ".join(s["name"] for s in r["segments"]),
         *(f"  wrote {v}" for v in r["outputs"].values()), *r["messages"], f"  {r['seconds']['total']} s"]))
    return EXIT_OK
