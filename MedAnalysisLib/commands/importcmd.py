"""``medanalysis import SRC -o OUT``: DICOM series (folder, ZIP archive, DICOMDIR) or an image
file into image files, with geometry QA and optional de-identification.

Several series and no ``--series``: one file per volume next to OUT (OUT stem + series
number), all listed in ``--json``. The subcommand is named ``import``; the module is
``importcmd`` because ``import`` is a Python keyword.
"""

from __future__ import annotations

from ..cli import EXIT_OK, StderrProgress, emit


def register(add) -> None:
    parser = add("import", run, "import DICOM series (folder, ZIP, DICOMDIR) or a NIfTI/NRRD/MHA file into image files")
    parser.add_argument("source", metavar="SRC", help="folder (searched recursively), ZIP archive, DICOMDIR or file")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output image (.nii, .nii.gz, .nrrd, .mha); several volumes go to OUT_<series>.ext")
    from ..core.import_parameters import ImportParameters  # light: the parser is built for every command
    from ..core.parameters import add_arguments

    add_arguments(parser, ImportParameters)  # series, anonymize, regularize, export-dicom, deid-key


def run(args) -> int:
    from ..core.dicom_import import ImportParameters, import_to_files
    from ..core.parameters import from_namespace

    parameters = from_namespace(ImportParameters, args).validate()
    result = import_to_files(args.source, args.output, parameters, progress=StderrProgress(args.json))
    emit(result, args.json, describe)
    return EXIT_OK


def describe(result: dict) -> str:
    lines = []
    for output in result["outputs"]:
        size = "x".join(str(v) for v in output["size"])
        spacing = ", ".join(f"{v:.4g}" for v in output["spacing_mm"])
        lines.append(f"wrote {output['file']}: {output['name']}, {size} voxels, {spacing} mm, {output['pixel_type']}")
        lines.extend(f"  warning: {w}" for w in output["warnings"])
    for folder in result.get("exported_dicom", []):
        lines.append(f"wrote de-identified DICOM {folder}")
    lines.append(f"{result['timings']['total_s']} s")
    return "\n".join(lines)
