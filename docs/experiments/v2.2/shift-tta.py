"""Bone/soft PSNR of an engine averaged over translated copies of its input (reflect-padded shifts)."""
import sys, numpy as np
from dexrt.runtime.engine import Engine
from dexrt.io.dataset import open_dataset
from dexrt.runtime.contract import areal_densities, decomposition
from dexrt.evaluation.metrics import metric_unit, psnr
eng = Engine(sys.argv[1]); ds = open_dataset(sys.argv[2], processed=True)
views = ds.split(sys.argv[3])[: int(sys.argv[4])]
S = int(sys.argv[5]) if len(sys.argv) > 5 else 16
def shifted(se, dy, dx):
    """prediction for se from the input moved by (dy, dx) >= 0 px down/right (reflect padding), moved back;
    weight 0 where the moved input lost the pixels"""
    h, w = se.shape
    x = np.pad(se, ((dy, 0), (dx, 0)), mode="reflect")[:h, :w]
    out = eng.infer(np.ascontiguousarray(x))
    wgt = np.zeros((h, w)); wgt[: h - dy, : w - dx] = 1
    back = []
    for o in out:
        b = np.zeros((h, w), np.float64); b[: h - dy, : w - dx] = o[dy:, dx:]
        back.append(b)
    return back, wgt
sets = {"0": [(0, 0)], "2": [(0, 0), (S, S)], "4": [(0, 0), (S, 0), (0, S), (S, S)]}
res = {k: [] for k in sets}
for v in views:
    se = ds.encodings["se"].physical(ds.stored(v, "se")).astype(np.float32)
    true = {c: ds.physical(v, c) for c in ("bone", "soft")}
    cache = {}
    for k, shifts in sets.items():
        acc = [0.0, 0.0]; wsum = 0.0
        for s in shifts:
            if s not in cache: cache[s] = shifted(se, *s)
            b, wg = cache[s]
            acc = [a + x * wg for a, x in zip(acc, b)]; wsum = wsum + wg
        pb, ps = (a / wsum for a in acc)
        bone, soft = areal_densities(pb, ps, decomposition(se, true["bone"], true["soft"]))
        res[k].append([psnr(metric_unit(bone, "bone"), metric_unit(true["bone"], "bone")),
                       psnr(metric_unit(soft, "soft"), metric_unit(true["soft"], "soft"))])
for k, r in res.items(): print(sys.argv[2].split('/')[-1], sys.argv[3], "shifts", k, "S", S, np.round(np.mean(r, 0), 2))
