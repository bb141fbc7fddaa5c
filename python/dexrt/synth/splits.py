"""Views and splits by gantry angle.

The circle is cut into `sectors` equal sectors. Each sector holds, in order, a train range, a guard gap, a val
range, a guard gap, a test range and a guard gap; the fractions of the usable arc per split are as asked. So
every split sees every orientation (AP, oblique, lateral, PA), and no test or val view is closer than the guard
gap to any view of another split. Views are spaced evenly along the usable arc.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dexrt.io.dataset import SPLITS


@dataclass(frozen=True)
class SplitPlan:
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    sectors: int = 4
    guard_deg: float = 4.0
    start_deg: float = -20.0  # the first train range starts here (so AP, 0 deg, lies inside a train range)

    def validate(self) -> None:
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {self.fractions}")
        if self.fractions[0] <= 0:
            raise ValueError("the train fraction must be > 0")
        if not (1 <= self.sectors <= 36):
            raise ValueError(f"sectors must be 1..36, got {self.sectors}")
        if not (0 <= self.guard_deg and 3 * self.guard_deg * self.sectors < 300):
            raise ValueError(f"guard gap {self.guard_deg} deg leaves too little of the circle for {self.sectors} sectors")

    def ranges(self) -> dict[str, list[list[float]]]:
        """split -> list of [start, end) gantry ranges in degrees (may run past 360: angles are mod 360)."""
        self.validate()
        width = 360.0 / self.sectors
        usable = width - 3 * self.guard_deg
        out: dict[str, list[list[float]]] = {s: [] for s in SPLITS}
        for k in range(self.sectors):
            a = self.start_deg + k * width
            for split, frac in zip(SPLITS, self.fractions):
                b = a + usable * frac
                if frac > 0:
                    out[split].append([round(a, 6), round(b, 6)])
                a = b + self.guard_deg
        return out

    def angles(self, n_views: int) -> list[tuple[float, str]]:
        """`n_views` (gantry angle in [0, 360), split) pairs, evenly spaced over the usable arc."""
        if n_views < 1:
            raise ValueError(f"views must be >= 1, got {n_views}")
        ranges = [(a, b, s) for s in SPLITS for a, b in self.ranges()[s]]
        ranges.sort()
        lengths = np.array([b - a for a, b, _ in ranges])
        total = float(lengths.sum())
        pos = (np.arange(n_views) + 0.5) * total / n_views  # positions along the concatenated usable arc
        ends = np.cumsum(lengths)
        out = []
        for p in pos:
            i = int(np.searchsorted(ends, p, side="right"))
            i = min(i, len(ranges) - 1)
            a, _, split = ranges[i]
            angle = a + p - (ends[i] - lengths[i])
            out.append((float(angle % 360.0), split))
        return out
