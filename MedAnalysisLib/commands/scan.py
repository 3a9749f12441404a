"""``medanalysis scan SRC``: studies, series and loadable volumes in a folder, ZIP archive,
DICOMDIR or image file, read header-only (no pixel data). Never prints patient names or IDs."""

from __future__ import annotations

from ..cli import EXIT_OK, StderrProgress, emit


def register(add) -> None:
    parser = add("scan", run, "list the studies and series in a folder, ZIP archive or DICOMDIR (headers only)")
    parser.add_argument("source", metavar="SRC", help="folder (searched recursively), ZIP archive, DICOMDIR or file")


def run(args) -> int:
    from ..core.dicom_import import scan_source

    result = scan_source(args.source, progress=StderrProgress(args.json))
    emit(result, args.json, describe)
    return EXIT_OK


def describe(result: dict) -> str:
    lines = [f"{result['source']} ({result['kind']}): {result['files']} file(s), {result['dicom_files']} DICOM, "
             f"{result['studies']} study(ies), {len(result['series'])} series"]
    for series in result["series"]:
        lines.append(f"  series {series['series_number']} {series['modality']} '{series['description']}' "
                     f"{series['date']}: {series['files']} file(s), {series['size_bytes'] / 1e6:.1f} MB")
        lines.append(f"    uid {series['series_uid']}")
        for volume in series["volumes"]:
            size = "x".join(str(v) for v in volume["size"])
            spacing = ", ".join(f"{v:.4g}" for v in volume["spacing_mm"])
            label = f" [{volume['label']}]" if volume["label"] else ""
            lines.append(f"    volume {volume['id']}{label}: {size} voxels, {spacing} mm, {volume['orientation']}")
            lines.extend(f"      warning: {w}" for w in volume["warnings"])
        lines.extend(f"    warning: {w}" for w in series["warnings"])
    for image in result["image_files"]:
        lines.append(f"  image file {image['file']}: " + ("x".join(str(v) for v in image.get("size", []))
                                                          or image.get("error", "")))
    for skipped in result["skipped"]:
        lines.append(f"  skipped {skipped['file']}: {skipped['reason']}")
    if result["non_image_dicom_objects"]:
        lines.append(f"  {result['non_image_dicom_objects']} DICOM object(s) without pixel data ignored")
    return "\n".join(lines)
