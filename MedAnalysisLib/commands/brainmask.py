"""``medanalysis brain-mask IN -o MASK``: deepbet brain extraction, a 0/1 mask on the input grid."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..cli import EXIT_OK, StderrProgress, emit


def register(add) -> None:
    parser = add("brain-mask", run, "brain extraction (skull stripping) with a real-data-trained network")
    parser.add_argument("input", metavar="IN")
    parser.add_argument("-o", "--output", required=True, metavar="MASK",
                        help="0/1 labelmap on the input grid (.nii.gz, .nrrd, ...) or .seg.nrrd (segment 'Brain')")
    parser.add_argument("--masked-output", metavar="F", help="also write the input with the non-brain voxels removed")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threshold", type=float, default=0.5, metavar="P",
                        help="brain probability a voxel needs to be in the mask (default 0.5)")


def run(args) -> int:
    from .. import mrml
    from ..core.errors import InputError
    from ..core.imageio import IMAGE_SUFFIXES, check_input_file, check_output_paths, write_image
    from ..core.progress import atomic_output, output_suffix
    from ..core.provenance import sidecar_path
    from ..logic.brainlogic import BrainExtractionLogic, BrainExtractionParameters

    outputs = [p for p in (args.output, args.masked_output) if p]
    for path in outputs:
        if output_suffix(path) not in IMAGE_SUFFIXES:
            raise InputError(path, f"unsupported output extension '{output_suffix(path)}'")
    check_input_file(args.input)
    check_output_paths([args.input], outputs)
    parameters = BrainExtractionParameters(device=args.device, threshold=args.threshold,
                                           maskedVolume=bool(args.masked_output)).validate()
    started = time.perf_counter()
    scene = mrml.newScene()
    nodeName = Path(args.input).name.split(".")[0]
    try:
        inputNode = mrml.loadVolumeNode(args.input, scene, name=nodeName)
        result = BrainExtractionLogic(scene).extractBrain(inputNode, parameters, progress=StderrProgress(args.json))
    except InputError as error:
        if error.subject != nodeName:
            raise
        raise InputError(args.input, error.problem) from None  # name the file, not the scene node
    record = mrml.getProvenance(result.segmentationNode)
    if output_suffix(args.output) == ".seg.nrrd":
        mrml.saveSegmentation(result.segmentationNode, args.output)
        with atomic_output(sidecar_path(args.output)) as tmp:
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    else:
        mask = BrainExtractionLogic.maskImage(result.segmentationNode, mrml.imageFromVolumeNode(inputNode))
        write_image(mask, args.output, provenance=record)
    written = {"mask": str(args.output)}
    if result.maskedVolumeNode is not None:
        written["masked"] = str(write_image(mrml.imageFromVolumeNode(result.maskedVolumeNode), args.masked_output,
                                            provenance=record))
    summary = {"operation": "brain-mask", "input": args.input, "brain_volume_ml": round(result.volumeMl, 2),
               "device": result.device, "outputs": written,
               "seconds": {**result.seconds, "total": round(time.perf_counter() - started, 3)}}
    emit(summary, args.json, lambda r: "\n".join(
        [f"brain mask of {r['input']}: {r['brain_volume_ml']} mL on {r['device']}",
         *(f"  wrote {v}" for v in r["outputs"].values()), f"  {r['seconds']['total']} s"]))
    return EXIT_OK
