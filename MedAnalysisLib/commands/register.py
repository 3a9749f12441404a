"""``medanalysis register FIXED MOVING -o RESAMPLED``: rigid, affine or deformable registration.

Writes the moving image resampled onto the fixed grid and, with ``--transform``, the ITK
transform (fixed -> moving, LPS; ``.tfm`` or ``.h5``) that SimpleITK and Slicer read.
"""

from __future__ import annotations

import time

from ..cli import EXIT_OK, StderrProgress, emit

ROTATION_SEARCH = {"deg": 90.0, "step_deg": 30.0}  # "--init moments+search": large rotations


def register(add) -> None:
    from ..core.register_presets import METRICS, PRESETS

    parser = add("register", run, "register MOVING to FIXED (rigid, affine, B-spline) and resample it")
    parser.add_argument("fixed", metavar="FIXED")
    parser.add_argument("moving", metavar="MOVING")
    parser.add_argument("-o", "--output", metavar="RESAMPLED", required=True,
                        help="the moving image resampled onto the fixed grid")
    parser.add_argument("--transform", metavar="OUT.tfm|.h5",
                        help="write the transform (fixed -> moving, LPS, ITK convention)")
    parser.add_argument("--preset", default="rigid", metavar="|".join(PRESETS),
                        help="stages to run (or a .json preset file); default rigid")
    parser.add_argument("--metric", choices=METRICS, help="mi (Mattes mutual information, default), mse or ncc")
    parser.add_argument("--init", default="moments", metavar="geometry|moments|FILE",
                        help="initialization: image centres, centres of mass (default), or a transform file; "
                             "append +search (e.g. moments+search) to also search large rotations")
    parser.add_argument("--fixed-mask", metavar="M", help="fixed mask: labelmap/volume file or .seg.nrrd")
    parser.add_argument("--moving-mask", metavar="M", help="moving mask: labelmap/volume file or .seg.nrrd")
    parser.add_argument("--threads", type=int, metavar="N", help="worker threads (default: all cores)")


def _parameters(args):
    from ..core.errors import InputError
    from ..core.register import RegistrationParameters

    init, search = args.init, 0.0
    if init.endswith("+search"):
        init, search = init[: -len("+search")], ROTATION_SEARCH["deg"]
        if init not in ("geometry", "moments", "identity"):
            raise InputError("--init", f"'+search' needs geometry or moments before it, got '{args.init}'")
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads", f"must be at least 1, got {args.threads}")
    return RegistrationParameters(preset=args.preset, metric=args.metric, init=init, rotation_search_deg=search,
                                  rotation_search_step_deg=ROTATION_SEARCH["step_deg"], threads=args.threads)


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
    initFile = args.init if args.init.split("+")[0] not in ("geometry", "moments", "identity") else None
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
              "metric": outputs.qa["metric"], "init": args.init, "outputs": written, "qa": outputs.qa,
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
