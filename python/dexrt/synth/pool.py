"""Training pools (`dexrt synth --pool N`): many views at random gantry angles, all inside the TRAIN ranges of the
split plan, so a pool never shows a held-out (val or test) angle, nor one within the guard gap of it.

A share of the views (`ap_pa_prob`) are frontal: AP (gantry 0) or PA (gantry 180) with a few degrees of jitter,
as clinical chest radiographs are; the rest are uniform over the train arc (oblique and lateral views).
"""

from __future__ import annotations

import numpy as np

from dexrt.synth.splits import SplitPlan

FRONTAL_JITTER_DEG = 5.0


def in_ranges(angle: float, ranges: list[list[float]]) -> bool:
    """Whether `angle` (deg, any turn) lies in one of the [start, end) ranges (which may run past 360)."""
    return any((angle - a) % 360.0 < (b - a) for a, b in ranges)


def pool_angles(plan: SplitPlan, n: int, rng: np.random.Generator, ap_pa_prob: float) -> list[float]:
    """`n` gantry angles in [0, 360), each strictly inside a train range of `plan`."""
    if not 0.0 <= ap_pa_prob <= 1.0:
        raise ValueError(f"the AP/PA share must be in [0, 1], got {ap_pa_prob}")
    train = plan.ranges()["train"]
    lengths = np.array([b - a for a, b in train])
    frontal = [c for c in (0.0, 180.0) if in_ranges(c, train)]  # a split plan may hold out AP or PA
    out = []
    for _ in range(n):
        angle = None
        if frontal and rng.uniform() < ap_pa_prob:
            angle = round((frontal[int(rng.integers(len(frontal)))]
                           + float(rng.uniform(-FRONTAL_JITTER_DEG, FRONTAL_JITTER_DEG))) % 360.0, 6)
        # A frontal angle whose jitter left the train arc, or one rounded onto a range's open end, is redrawn.
        while angle is None or not in_ranges(angle, train):
            k = int(rng.choice(len(train), p=lengths / lengths.sum()))
            angle = round(float(rng.uniform(train[k][0], train[k][1])) % 360.0, 6)
        out.append(angle)
    return out
