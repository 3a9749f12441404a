"""``medanalysis info FILE``: geometry, pixel type, range and metadata of any image we read."""

from __future__ import annotations

import os

from ..cli import EXIT_OK, emit


def register(add) -> None:
    parser = add("info", run, "geometry, pixel type, range and metadata of an image file")
    parser.add_argument("file")


def run(args) -> int:
    from ..core.imageio import image_info, read_image, read_image_header

    reader = read_image_header(args.file)
    image = read_image(args.file)
    info = {"file": os.fspath(args.file), **image_info(image, reader if hasattr(reader, "Execute") else None)}

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
