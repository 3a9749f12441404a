"""``medanalysis register FIXED MOVING -o RESAMPLED``: rigid, affine or deformable registration.

Writes the moving image resampled onto the fixed grid and, with ``--transform``, the ITK
transform (fixed -> moving, LPS; ``.tfm`` or ``.h5``) that SimpleITK and Slicer read.
"""

from __future__ import annotations

import time

from ..cli import EXIT_OK, StderrProgress, emit

ROTATION_SEARCH = {"deg": 90.0, "step_deg": 30.0}  # "--init moments+search": large rotations


def register(add) -> None:
    parser = add("register", run, "register MOVING to FIXED (rigid, affine, B-spline) and resample it")
    parser.add_argument("fixed", metavar="FIXED")
    parser.add_argument("moving", metavar="MOVING")
    parser.add_argument("-o", "--output", metavar="RESAMPLED", required=True,
                        help="the moving image resampled onto the fixed grid")
    parser.add_argument("--transform", metavar="OUT.tfm|.h5",
                        help="write the transform (fixed -> moving, LPS, ITK convention)")
    parser.add_argument("--fixed-mask", metavar="M", help="fixed mask: labelmap/volume file or .seg.nrrd")
    parser.add_argument("--moving-mask", metavar="M", help="moving mask: labelmap/volume file or .seg.nrrd")
    from ..core.parameters import add_arguments
    from ..core.registration_parameters import RegistrationParameters  # light: built for every command

    add_arguments(parser, RegistrationParameters)  # preset, metric, init, threads: from their one declaration


def _parameters(args):
    from ..core.errors import InputError
    from ..core.parameters import from_namespace
    from ..core.registration_parameters import INITIALIZATIONS, RegistrationParameters

    parameters = from_namespace(RegistrationParameters, args)
    if parameters.init.endswith("+search"):  # the command line's shorthand for a rotation search
        parameters.init = parameters.init[: -len("+search")]
        if parameters.init not in INITIALIZATIONS[:2]:
            raise InputError("init", f"'+search' needs geometry or moments before it, got '{args.init}'")
        parameters.rotation_search_deg = ROTATION_SEARCH["deg"]
        parameters.rotation_search_step_deg = ROTATION_SEARCH["step_deg"]
    return parameters


def _loadMask(path, scene, name):
    from .. import mrml

    if path is None:
        return None
    if str(path).lower().endswith(".seg.nrrd"):
        return mrml.loadSegmentation(path, scene, name=name)
    return mrml.loadVolumeNode(path, scene, name=name, labelmap=True)


def run(args) -> int:
    from .. import mrml
    from ..core.errors import InputError
    from ..core.imageio import IMAGE_SUFFIXES, check_output_paths, write_image
    from ..core.progress import output_suffix
    from ..core.register import check_file_dimensions, check_transform_path, resolve_stages, write_transform
    from ..logic.registrationlogic import RegistrationLogic

    if output_suffix(args.output) not in IMAGE_SUFFIXES or output_suffix(args.output) == ".seg.nrrd":
        raise InputError(args.output, f"unsupported output extension '{output_suffix(args.output)}'")
    if args.transform:
        check_transform_path(args.transform)
    init = args.init or "moments"
    initFile = init if init.split("+")[0] not in ("geometry", "moments", "identity") else None
    check_output_paths([args.fixed, args.moving, args.fixed_mask, args.moving_mask, initFile],
                       [args.output, args.transform])
    parameters = _parameters(args)
    resolve_stages(parameters)  # a bad preset or metric fails before any image is read
    check_file_dimensions(args.fixed, args.moving)  # volume nodes would turn a 2-D image into one slice
    started = time.perf_counter()
    scene = mrml.newScene()
    fixedNode = mrml.loadVolumeNode(args.fixed, scene, name="fixed")
    movingNode = mrml.loadVolumeNode(args.moving, scene, name="moving")
    fixedMaskNode = _loadMask(args.fixed_mask, scene, "fixed_mask")
    movingMaskNode = _loadMask(args.moving_mask, scene, "moving_mask")
    # error messages name the files, not the node names
    for node, path in ((fixedNode, args.fixed), (movingNode, args.moving), (fixedMaskNode, args.fixed_mask),
                       (movingMaskNode, args.moving_mask)):
        if node is not None:
            node.SetName(str(path))
    logic = RegistrationLogic(scene)
    outputs = logic.register(fixedNode, movingNode, parameters, fixedMaskNode=fixedMaskNode,
                             movingMaskNode=movingMaskNode, progress=StderrProgress(args.json))
    record = mrml.getProvenance(outputs.transformNode)
    written = {"resampled": str(write_image(mrml.imageFromVolumeNode(outputs.resampledVolumeNode), args.output,
                                            provenance=record))}
    if args.transform:
        transform = mrml.sitkTransformFromNode(outputs.transformNode)
        written["transform"] = str(write_transform(transform, args.transform, provenance=record))
    result = {"operation": "register", "fixed": args.fixed, "moving": args.moving, "preset": parameters.preset,
              "metric": outputs.qa["metric"], "init": init, "outputs": written, "qa": outputs.qa,
              "seconds": round(time.perf_counter() - started, 3)}

    def human(r):
        qa = r["qa"]
        lines = [f"registered {r['moving']} to {r['fixed']} ({r['preset']}, {qa['metric']}): metric "
                 f"{qa['initial_metric']:.4g} -> {qa['final_metric']:.4g}, {qa['iterations']} iterations, "
                 f"{qa['seconds']} s"]
        if qa.get("mask_dice") is not None:
            lines.append(f"  mask Dice {qa['mask_dice_initial']} -> {qa['mask_dice']}")
        lines += [f"  wrote {v}" for v in r["outputs"].values()]
        return "\n".join(lines)

    emit(result, args.json, human)
    return EXIT_OK
