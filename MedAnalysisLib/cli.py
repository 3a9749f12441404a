"""``medanalysis``: the headless command-line entry point.

Exit codes: 0 ok; 1 internal error; 2 bad input (one line naming the file and the
problem); 3 batch finished but some cases failed. ``--json`` prints one JSON object on
stdout; human progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Callable, Optional, Sequence

from . import __version__, RESEARCH_USE_NOTICE
from .core.errors import InputError, OperationCancelled

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_CASES_FAILED = 0, 1, 2, 3


class StderrProgress:
    """``progress(fraction, message)`` printing one line per new message to stderr."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.last = None
        self.started = time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet or message == self.last:
            return
        self.last = message
        print(f"[{time.perf_counter() - self.started:6.1f}s {100 * fraction:5.1f}%] {message}", file=sys.stderr, flush=True)


def emit(result: dict, asJson: bool, human: Callable[[dict], str]) -> None:
    if asJson:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(human(result))


# --- subcommands ------------------------------------------------------------------------------

def cmdInfo(args) -> int:
    from .core.imageio import image_info, read_image, read_image_header

    reader = read_image_header(args.file)
    image = read_image(args.file)
    info = {"file": os.fspath(args.file), **image_info(image, reader)}

    def human(i):
        lines = [f"{i['file']}", f"  size        {i['size']}  ({i['pixel_type']}, {i['components']} component(s))",
                 f"  spacing     {', '.join(f'{v:.4g}' for v in i['spacing_mm'])} mm",
                 f"  origin LPS  {', '.join(f'{v:.4g}' for v in i['origin_lps_mm'])} mm"]
        if "orientation" in i:
            lines.append(f"  orientation {i['orientation']}")
        if "range" in i:
            lines.append(f"  range       {i['range'][0]:.6g} .. {i['range'][1]:.6g}")
        return "\n".join(lines)

    emit(info, args.json, human)
    return EXIT_OK


def cmdDemo(args) -> int:
    from .demo import runDemo

    result = runDemo(args.output, progress=StderrProgress(args.json))

    def human(r):
        lines = ["MedAnalysis demo: MNI ICBM152 sample through the headless MRML bridge",
                 f"  round trip volume: voxels identical={r['round_trip']['voxels_identical']}, "
                 f"geometry identical={r['round_trip']['geometry_identical']}",
                 f"  round trip segmentation: labels identical={r['round_trip']['labels_identical']}",
                 "  tissue volumes: " + ", ".join(f"{k} {v} mL" for k, v in r["tissue_volumes_ml"].items()),
                 *(f"  wrote {path}" for path in r["outputs"].values()),
                 f"  {r['seconds']} s", RESEARCH_USE_NOTICE]
        return "\n".join(lines)

    emit(result, args.json, human)
    ok = all(result["round_trip"].values())
    return EXIT_OK if ok else EXIT_INTERNAL


# --- parser -----------------------------------------------------------------------------------

def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medanalysis", description=f"MedAnalysis {__version__}: medical image "
                                     f"analysis, headless. {RESEARCH_USE_NOTICE}")
    parser.add_argument("--version", action="version", version=f"medanalysis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, handler, helpText: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helpText, description=helpText)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.set_defaults(handler=handler)
        return p

    p = add("info", cmdInfo, "geometry, pixel type, range and metadata of an image file")
    p.add_argument("file")

    p = add("demo", cmdDemo, "run the main job on the bundled sample, offline")
    p.add_argument("-o", "--output", default="demo-output", help="output folder (default: demo-output)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = buildParser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except InputError as error:
        print(f"medanalysis {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OperationCancelled as error:
        print(f"medanalysis {args.command}: {error}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print(f"medanalysis {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as error:  # noqa: BLE001 - last resort: one line, traceback on request
        if os.environ.get("MEDANALYSIS_DEBUG"):
            traceback.print_exc()
        print(f"medanalysis {args.command}: internal error: {type(error).__name__}: "
              f"{' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
