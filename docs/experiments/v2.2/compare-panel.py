"""Two engines on the same views: rows = (engine A: view 1, view 2, engine B: view 1, view 2); columns SE | true
bone | predicted bone | true soft | predicted soft, each tile stretched over the true image's 0.5-99.5 %."""
import sys
import numpy as np
from PIL import Image
from dexrt.engine import Engine
from dexrt.dataset import open_dataset
from dexrt.contract import attenuation_targets, decomposition
a, b, data, split, idx, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
ds = open_dataset(data, processed=True)
views = [ds.split(split)[int(i)] for i in idx.split(",")]
def stretch(x, ref):
    lo, hi = np.percentile(ref, [0.5, 99.5]); return np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1)
rows = []
for path in (a, b):
    eng = Engine(path)
    for v in views:
        se = ds.encodings["se"].physical(ds.stored(v, "se")).astype(np.float32)
        tb, ts = (ds.physical(v, c) for c in ("bone", "soft"))
        pb, ps = eng.infer(se)
        # true parts in the engine's units: the SE image's bone and soft parts (fitted per view)

        kb_b, ks_s = attenuation_targets(tb, ts, decomposition(se, tb, ts))
        rows.append(np.concatenate([stretch(se, se), stretch(kb_b, kb_b), stretch(pb, kb_b), stretch(ks_s, ks_s),
                                    stretch(ps, ks_s)], axis=1))
Image.fromarray((np.concatenate(rows, 0) * 255).astype(np.uint8)).save(out)
print(out, [v.id for v in views])
