"""`dexrt fit --report DIR`: the before/after table (report.md, scores.json) and panels of the held-out views."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dexrt._atomic import atomic_write

# Issue 28's targets for a fitted model on its held-out views (docs/fit.md)
TARGETS = {"bone/psnr": 36.0, "soft/psnr": 42.0, "bone_suppression": 0.9}
TARGET_GAIN_DB = 3.0
TARGET_WALL_MIN = 20.0
PANEL_VIEWS = 4
_ROWS = [("bone/psnr", "bone PSNR (dB)"), ("bone/ssim", "bone SSIM"), ("soft/psnr", "soft PSNR (dB)"),
         ("soft/ssim", "soft SSIM"), ("bone/mae", "bone MAE"), ("soft/mae", "soft MAE"),
         ("bone_suppression", "bone suppression"), ("bone_suppression_ratio", "BSR (literature)")]


def comparison_rows(before: list[np.ndarray], after: list[np.ndarray], views: int = PANEL_VIEWS) -> list[np.ndarray]:
    """Panel rows SE | true bone | starting bone | fitted bone | true soft | starting soft | fitted soft, from the
    rows `score` returns for the same views (five tiles each), for `views` views spread over the set."""
    picks = np.unique(np.linspace(0, len(before) - 1, min(views, len(before))).round().astype(int))
    out = []
    for i in picks:
        w = before[i].shape[1] // 5
        a, b = ([row[:, k * w:(k + 1) * w] for k in range(5)] for row in (before[i], after[i]))
        out.append(np.concatenate([a[0], a[1], a[2], b[2], a[3], a[4], b[4]], axis=1))
    return out


def table(fit: dict[str, Any]) -> str:
    scores = fit["scores"]
    before, after = scores["before"], scores["after"]
    lines = ["| measure | starting model | fitted engine | change |", "| --- | --- | --- | --- |"]
    for key, name in _ROWS:
        if key in before and key in after:
            lines.append(f"| {name} | {before[key]:.4g} | {after[key]:.4g} | {after[key] - before[key]:+.3g} |")
    return "\n".join(lines)


def targets(fit: dict[str, Any]) -> str:
    after, gain = fit["scores"]["after"], fit["scores"]["gain_db"]["bone"]
    wall = fit["timings_s"]["wall_s"] / 60.0
    rows = [(f"{k} >= {v:g}", f"{after.get(k, float('nan')):.4g}", after.get(k, -np.inf) >= v)
            for k, v in TARGETS.items()]
    rows.append((f"bone gain >= {TARGET_GAIN_DB:g} dB over the starting model", f"{gain:+.2f} dB",
                 gain >= TARGET_GAIN_DB))
    rows.append((f"wall time, CT to engine, <= {TARGET_WALL_MIN:g} min", f"{wall:.1f} min", wall <= TARGET_WALL_MIN))
    return "\n".join(["| target | measured | met |", "| --- | --- | --- |"]
                     + [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in rows])


def write_report(folder: Path, fit: dict[str, Any], patient: dict[str, Any], before_rows: list[np.ndarray],
                 after_rows: list[np.ndarray], train_dataset: Path) -> None:
    from dexrt.evaluation.metrics import write_panel

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "scores.json") as f:
        f.write((json.dumps({"patient": patient, "fit": fit}, indent=2) + "\n").encode())
    write_panel(folder / "panel.png", comparison_rows(before_rows, after_rows))
    sheet = train_dataset / "contact_sheet.png"
    if sheet.is_file():
        shutil.copyfile(sheet, folder / "training_views.png")
    g, t = fit["geometry"], fit["timings_s"]
    angles = "; ".join(f"{a['start_deg']:g} + {a['extent_deg']:g} deg (couch {a['couch_deg']:g}, isocentre "
                       f"{a['isocentre']}; {a['from']})" for a in fit["angles"])
    facts = [
        f"Patient: {patient.get('patient_id') or '(no PatientID)'}; CT {fit['ct']['source']} (sha256 "
        f"{fit['ct']['sha256'][:16]}...); study {patient.get('study_instance_uid') or '-'}, series "
        f"{patient.get('series_instance_uid') or '-'}.",
        f"Isocentre(s), DICOM patient coordinates (mm): {fit['isocentres_lps_mm']}, from {fit['isocentres_from']}; "
        f"patient position {fit['patient_position']}.",
        f"Geometry: {g['name']}: SID {g['sid_mm']:g} mm, SDD {g['sdd_mm']:g} mm, panel {g['detector_mm'][0]:g} x "
        f"{g['detector_mm'][1]:g} mm. Views at {fit['pixel_at_iso_mm']:g} mm a pixel at the isocentre; held-out "
        f"views over the panel's field ({fit['panel_field_px'][0]} x {fit['panel_field_px'][1]} px).",
        f"kV angles ({fit['angles_from']}): {angles}.",
        f"Views: {fit['views']['train']} train, {fit['views']['val']} val, {fit['views']['test']} held out "
        f"({fit['scores']['split']}).",
        f"Budget {fit['budget_minutes']:g} min; wall time {t['wall_s'] / 60:.1f} min: render {t['render_s']:.0f} s, "
        f"fine-tuning {t['train_s']:.0f} s ({fit['training'].get('steps')} steps), export {t['export_s']:.0f} s, "
        f"build {t['build_s']:.0f} s.",
        f"Starting model: {fit['init']['engine_scored']}; fitted: {fit['scores']['after_engine']}. Metrics as "
        "`dexrt eval` computes them (docs/training.md).",
    ]
    text = "\n".join(["# dexrt fit report", ""] + [f"- {f}" for f in facts] + ["", table(fit), "", targets(fit), "",
                     "`panel.png`: one row per held-out view: SE | true bone | starting model's bone | fitted bone | "
                     "true soft | starting model's soft | fitted soft, each tile stretched over its own range. "
                     "`training_views.png`: training views (SE | bone | soft).", ""])
    if fit.get("warnings"):
        text += "\nWarnings:\n\n" + "\n".join(f"- {w}" for w in fit["warnings"]) + "\n"
    with atomic_write(folder / "report.md") as f:
        f.write(text.encode())
