"""``medanalysis register FIXED MOVING -o RESAMPLED``: rigid, affine or deformable registration.

Writes the moving image resampled onto the fixed grid and, with ``--transform``, the ITK
transform (fixed -> moving, LPS; ``.tfm`` or ``.h5``) that SimpleITK and Slicer read.
"""

from __future__ import annotations

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


def run(args) -> int:
    from ..workflows import registerFiles

    parameters = _parameters(args)
    result = registerFiles(args.fixed, args.moving, args.output, parameters, transformPath=args.transform,
                           fixedMaskPath=args.fixed_mask, movingMaskPath=args.moving_mask,
                           progress=StderrProgress(args.json))
    result["init"] = args.init or result["init"]

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
