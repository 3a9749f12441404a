"""Self-contained HTML report of a longitudinal lesion study (images embedded as PNG).

Research use only. The report holds no patient identifiers: it names the inputs only by
the labels the caller passes (file names of de-identified data, or generic names).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from . import geometry
from .progress import atomic_output

STATUS_COLORS = {"new": "#d62728", "grown": "#ff7f0e", "shrunk": "#2ca02c", "stable": "#7f7f7f",
                 "vanished": "#1f77b4"}
LESION_CSV_COLUMNS = ("id", "status", "event", "centroid_r", "centroid_a", "centroid_s", "volume_baseline_ml",
                      "volume_followup_ml", "volume_change_ml", "volume_change_percent",
                      "max_diameter_baseline_mm", "max_diameter_followup_mm", "tissue", "baseline_ids",
                      "followup_ids")


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _display_volume(image: sitk.Image) -> sitk.Image:
    # radiological axial display: columns increase to the patient's left, rows to posterior
    return geometry.reorient(image, "LPS")


def lesion_slices(baseline: sitk.Image, followup_in_baseline: sitk.Image, baseline_mask: sitk.Image,
                  followup_mask_in_baseline: sitk.Image, centroid_ras: Sequence[float], title: str,
                  half_width_mm: float = 35.0) -> str:
    """PNG (base64) of axial slices through ``centroid_ras`` at both time points, lesion outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volumes = [_display_volume(v) for v in (baseline, followup_in_baseline, baseline_mask, followup_mask_in_baseline)]
    point_lps = tuple(geometry.ras_to_lps_points(np.array([centroid_ras]))[0])
    i, j, k = volumes[0].TransformPhysicalPointToIndex(point_lps)
    size = volumes[0].GetSize()
    k = int(np.clip(k, 0, size[2] - 1))
    spacing = volumes[0].GetSpacing()
    ri, rj = int(half_width_mm / spacing[0]), int(half_width_mm / spacing[1])
    rows = slice(max(0, j - rj), min(size[1], j + rj + 1))
    cols = slice(max(0, i - ri), min(size[0], i + ri + 1))
    arrays = [sitk.GetArrayViewFromImage(v)[k][rows, cols] for v in volumes]
    figure, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    high = float(np.percentile(arrays[0], 99.5)) or 1.0
    for axis, image, mask, label in ((axes[0], arrays[0], arrays[2], "baseline"),
                                     (axes[1], arrays[1], arrays[3], "follow-up (registered)")):
        axis.imshow(image, cmap="gray", vmin=0, vmax=high, aspect=spacing[1] / spacing[0])
        if np.any(mask > 0):
            axis.contour(mask > 0, levels=[0.5], colors=["#ff3030"], linewidths=1.0)
        axis.plot([i - cols.start], [j - rows.start], "+", color="#ffd000", markersize=10)
        axis.set_title(label, fontsize=9)
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    return _png(figure)


def burden_plot(summary: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(3.6, 3.0))
    values = [summary["burden_baseline_ml"], summary["burden_followup_ml"]]
    axis.bar(["baseline", "follow-up"], values, color=["#4c72b0", "#dd8452"])
    for x, v in enumerate(values):
        axis.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=9)
    axis.set_ylabel("total lesion volume (mL)")
    axis.set_title("Lesion burden", fontsize=10)
    return _png(figure)


def change_plot(lesions: Sequence[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(4.0, 0.45 * len(lesions) + 1.5), 3.0))
    if lesions:
        ids = [l["id"] for l in lesions]
        changes = [l["volume_change_ml"] for l in lesions]
        axis.bar(ids, changes, color=[STATUS_COLORS[l["status"]] for l in lesions])
        axis.axhline(0, color="black", linewidth=0.8)
        axis.tick_params(axis="x", labelrotation=90, labelsize=8)
    else:
        axis.text(0.5, 0.5, "no lesions", ha="center", va="center", transform=axis.transAxes)
    axis.set_ylabel("volume change (mL)")
    axis.set_title("Per-lesion volume change (follow-up - baseline)", fontsize=10)
    return _png(figure)


def write_lesions_csv(lesions: Sequence[dict], path: Path) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=LESION_CSV_COLUMNS)
            writer.writeheader()
            for lesion in lesions:
                row = {k: lesion.get(k) for k in LESION_CSV_COLUMNS}
                row["centroid_r"], row["centroid_a"], row["centroid_s"] = lesion["centroid_ras"]
                row["baseline_ids"] = " ".join(lesion.get("baseline_ids", []))
                row["followup_ids"] = " ".join(lesion.get("followup_ids", []))
                writer.writerow(row)


def write_report(report_dir: Path, result: dict, provenance: dict, images: Optional[dict] = None,
                 inputs: Optional[dict] = None, max_lesion_views: int = 40) -> Path:
    """Write report.html, lesions.csv and summary.json into ``report_dir`` (each atomically).

    ``images`` (optional) holds SimpleITK images in baseline space: ``baseline``,
    ``followup`` (registered), ``baseline_mask``, ``followup_mask`` (registered), for the
    slice views.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    lesions, summary = result["lesions"], result["summary"]
    write_lesions_csv(lesions, report_dir / "lesions.csv")
    with atomic_output(report_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps({"summary": summary, "lesions": lesions, "provenance": provenance,
                                   "inputs": inputs or {}}, indent=2))
    views = []
    if images:
        for lesion in lesions[:max_lesion_views]:
            title = (f"{lesion['id']}: {lesion['status']}  {lesion['volume_baseline_ml']:.2f} -> "
                     f"{lesion['volume_followup_ml']:.2f} mL")
            views.append((lesion["id"], lesion_slices(images["baseline"], images["followup"], images["baseline_mask"],
                                                      images["followup_mask"], lesion["centroid_ras"], title)))
    counts = summary["counts"]
    esc = html.escape
    rows = "\n".join(
        f"<tr><td>{esc(l['id'])}</td><td style='color:{STATUS_COLORS[l['status']]}'><b>{esc(l['status'])}</b>"
        f"{' (' + esc(l['event']) + ')' if l.get('event') else ''}</td>"
        f"<td>{', '.join(f'{v:.1f}' for v in l['centroid_ras'])}</td><td>{l['volume_baseline_ml']:.3f}</td>"
        f"<td>{l['volume_followup_ml']:.3f}</td><td>{l['volume_change_ml']:+.3f}</td>"
        f"<td>{'' if l['volume_change_percent'] is None else format(l['volume_change_percent'], '+.0f') + ' %'}</td>"
        f"<td>{esc(str(l.get('tissue') or ''))}</td></tr>" for l in lesions)
    no_lesions = "" if lesions else "<p><b>No lesions were found in either time point.</b></p>"
    view_html = "\n".join(f"<figure id='view-{esc(i)}'><img alt='{esc(i)}' src='data:image/png;base64,{png}'/></figure>"
                          for i, png in views)
    burden_change = summary.get("burden_change_percent")
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>MedAnalysis lesion monitoring report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; font-size: 13px; }}
th {{ background: #eee; }} .warning {{ background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em; }}
figure {{ display: inline-block; margin: 0.5em; }} .plots img {{ margin-right: 1em; vertical-align: top; }}
</style></head><body>
<h1>Lesion monitoring report</h1>
<p class="warning"><b>Research use only &mdash; not for clinical decisions.</b> Produced by MedAnalysis
{esc(str(provenance.get('version', '')))}; results are unverified automatic measurements.</p>
<h2>Summary</h2>
<table>
<tr><th>lesions at baseline</th><td>{summary['lesions_baseline']}</td><th>lesions at follow-up</th><td>{summary['lesions_followup']}</td></tr>
<tr><th>burden baseline</th><td>{summary['burden_baseline_ml']:.3f} mL</td><th>burden follow-up</th><td>{summary['burden_followup_ml']:.3f} mL</td></tr>
<tr><th>burden change</th><td>{summary['burden_change_ml']:+.3f} mL</td><th>relative</th><td>{'' if burden_change is None else format(burden_change, '+.1f') + ' %'}</td></tr>
<tr><th>new</th><td>{counts['new']}</td><th>grown</th><td>{counts['grown']}</td></tr>
<tr><th>shrunk</th><td>{counts['shrunk']}</td><th>stable</th><td>{counts['stable']}</td></tr>
<tr><th>vanished</th><td>{counts['vanished']}</td><th>merges / splits</th><td>{summary['merges']} / {summary['splits']}</td></tr>
</table>
{no_lesions}
<div class="plots"><img alt="burden" src="data:image/png;base64,{burden_plot(summary)}"/>
<img alt="per-lesion change" src="data:image/png;base64,{change_plot(lesions)}"/></div>
<h2>Lesions</h2>
<p>Positions are RAS millimetres in the baseline space; volumes are measured in each time point's own space.
Change thresholds: {summary['thresholds']['relative_change'] * 100:.0f} % and {summary['thresholds']['absolute_change_ml']} mL.</p>
<table><tr><th>id</th><th>status</th><th>centroid RAS (mm)</th><th>baseline (mL)</th><th>follow-up (mL)</th>
<th>change (mL)</th><th>change</th><th>tissue</th></tr>
{rows}
</table>
<h2>Slice views</h2>
{view_html or '<p>No lesion to show.</p>'}
<h2>Provenance</h2>
<pre>{esc(json.dumps(provenance, indent=2, sort_keys=True))}</pre>
</body></html>
"""
    path = report_dir / "report.html"
    with atomic_output(path) as tmp:
        tmp.write_text(document)
    return path
