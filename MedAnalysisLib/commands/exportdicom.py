"""``medanalysis export-dicom SEG --reference DICOM_DIR -o OUT_DIR``: a segmentation as a DICOM SEG
on the series it was made from, and (``--report``) a monitoring report as a TID 1500 SR."""

from __future__ import annotations

from ..cli import EXIT_OK, StderrProgress, emit


def register(add) -> None:
    parser = add("export-dicom", run, "write a segmentation as DICOM SEG (and a monitoring report as DICOM SR) "
                                      "on its source DICOM series")
    parser.add_argument("segmentation", metavar="SEG", help=".seg.nrrd or a labelmap image (any grid that "
                                                            "overlaps the reference series)")
    parser.add_argument("--reference", required=True, metavar="DICOM_DIR",
                        help="folder, ZIP or DICOMDIR with the DICOM series the segmentation was made from")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for seg.dcm (and sr.dcm)")
    from ..core.export_parameters import DicomExportParameters  # light: the parser is built for every command
    from ..core.parameters import add_arguments

    add_arguments(parser, DicomExportParameters)


def run(args) -> int:
    from .. import mrml
    from ..core.imageio import check_output_paths, provenance_sidecar, read_image
    from ..core.labels import SegmentSpec
    from ..core.parameters import from_namespace
    from ..core.progress import output_suffix
    from ..logic.dicomexportlogic import DicomExportLogic, DicomExportParameters, algorithm_from_provenance

    parameters = from_namespace(DicomExportParameters, args).validate()
    check_output_paths([args.segmentation, args.reference, parameters.reportDir, parameters.deidKey], [],
                       folder_outputs=[args.output])
    try:
        record = provenance_sidecar(args.segmentation)
    except (OSError, ValueError):  # an unreadable sidecar: the segmentation is exported as of unknown origin
        record = None
    logic = DicomExportLogic(mrml.newScene())
    progress = StderrProgress(args.json)
    if output_suffix(args.segmentation) == ".seg.nrrd":  # segment metadata through Slicer's storage node
        node = mrml.loadSegmentation(args.segmentation, logic.scene)
        if record is not None:
            mrml.setProvenance(node, record)
        result = logic.exportSegmentation(node, args.reference, args.output, parameters, progress=progress)
    else:  # a labelmap: straight to the export, no segmentation node needed
        specs = [SegmentSpec.from_dict(entry) for entry in (record or {}).get("segments", [])]
        result = logic.exportLabelmap(lambda: (read_image(args.segmentation), specs), args.segmentation,
                                      args.reference, args.output, parameters, algorithm_from_provenance(record),
                                      progress=progress)
    emit(result, args.json, describe)
    return EXIT_OK


def describe(result: dict) -> str:
    lines = [f"wrote DICOM SEG {result['seg']}: {len(result['segments'])} segment(s) "
             f"({', '.join(s['name'] for s in result['segments'])}), {result['frames']} frame(s) on "
             f"{result['source_instances']} source instance(s)"]
    if "sr" in result:
        lines.append(f"wrote DICOM SR {result['sr']}: {result['lesions']} lesion(s), {result['time_point']}")
    lines.append(f"{result['seconds']} s")
    return "\n".join(lines)
