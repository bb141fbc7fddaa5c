"""Two engines on the same views, as `dexrt eval` draws its panels (dexrt.evaluation.evaluate.predicted_views,
dexrt.evaluation.metrics.scored_view, write_panel): rows engine A view 1, view 2, ..., then engine B; columns SE | true
bone | predicted bone | true soft | predicted soft, physical units, each tile stretched over its own 0.5-99.5 %.

    python docs/experiments/v2.2/compare-panel.py ENGINE_A ENGINE_B DATASET SPLIT INDEX[,INDEX...] OUT.png
"""
import sys

from dexrt.runtime.engine import Engine
from dexrt.evaluation.evaluate import predicted_views
from dexrt.evaluation.metrics import scored_view, write_panel

a, b, data, split, indices, out = sys.argv[1:7]
wanted = [int(i) for i in indices.split(",")]
rows = []
for path in (a, b):
    views = list(predicted_views(Engine(path), data, split=split, max_views=max(wanted) + 1))
    rows += [scored_view(*views[i])[1] for i in wanted]
write_panel(out, rows)
print(out)
