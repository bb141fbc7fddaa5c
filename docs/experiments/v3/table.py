"""Model v3's per-patient table from `dexrt eval` results: python table.py EVALS NAME [NAME ...] (markdown).
PATIENTS (environment, space-separated) picks the patients' columns, as for eval.sh."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SETS = [(p, s) for p in os.environ.get("PATIENTS", "example lung1 lung2").split() for s in ("unseen", "inside")]


def row(root: Path, name: str) -> list[str]:
    cells = [name]
    for patient, where in SETS:
        path = root / name / f"{patient}-{where}" / "metrics.json"
        if not path.is_file():
            cells.append("-")
            continue
        m = json.loads(path.read_text())["metrics"]
        cells.append(f"{m['bone/psnr']:.2f} / {m['soft/psnr']:.2f} / {m['bone_suppression']:.2f}")
    return cells


if __name__ == "__main__":
    root, names = Path(sys.argv[1]), sys.argv[2:]
    print("| engine | " + " | ".join(f"{p} {w}" for p, w in SETS) + " |")
    print("| --- " * (len(SETS) + 1) + "|")
    for name in names:
        print("| " + " | ".join(row(root, name)) + " |")
