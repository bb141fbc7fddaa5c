"""One ablation row of the Model v2 study: train -> export -> build-engine -> `dexrt eval` on every eval set.

    python docs/experiments/studies/ablation.py ROW --data DATASET \
        --eval unseen=DS:test inside=DS:train shifted=DS2:test --out docs/experiments/v2 --steps 1000 \
        [-- extra dexrt train options]

Rows (each adds one change to the one before it, same seed, steps and data):
  baseline   pix2pix as shipped (transposed convs, SE through its window, GAN + L1 1000, no dropout)
  resize     + nearest 2x + 3x3 conv upsampling
  robust     + scale-free input (robust normalisation), free soft channel
  soft-se    + soft derived from SE (bone and a correction)
  nogan-grad + no discriminator, gradient L1 (weight 1000)

Leave-one-out rows (the default model's recipe with one change undone; pass its depth, crop and validation data
as extra options, e.g. `-- --depth 8 --crop 256 --val-data val120 --decay-start 1`):
  v2              the default model's recipe (= nogan-grad)
  v2-transpose    transposed-convolution upsampling instead of resize
  v2-free-soft    a free soft channel instead of soft from SE
  v2-window       SE through its window instead of the robust normalisation (so a free soft channel too)
  v2-no-grad      no gradient L1
  v2-consistency  a free soft channel and an L1 of SE - (bone + soft) (weight 1000) instead of soft from SE
  v2-laplacian    an L1 of Laplacian-pyramid bands (weight 1000) instead of the gradient L1
  v2-msssim       1 - MS-SSIM (weight 1000) added to the default recipe
  v2-msssim-laplacian  both structure losses: MS-SSIM added and the Laplacian pyramid instead of the gradient L1
  v2-head         a full-resolution head of 8 channels (two 3x3 convs on the SE image and the decoder's features)
  v2-ngf24        generator width 24 instead of 16
  v2-crops        random 128-px crops, batch 8, depth 7 (the same pixels per step; pass no --depth or --crop)
  v2-depth6       6 levels instead of 8 (a 4x4 bottleneck at 256^2: local context only; pass no --depth or --crop)

The run folder (checkpoints) goes to a scratch folder; the row's config, training log, eval metrics, panel and
CPU seconds go to OUT/ROW/ so they can be committed. Budgets are stated in CPU-seconds (user + system time of
the training process), since the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROWS = {
    "baseline": [],
    "resize": ["--upsample", "resize"],
    "robust": ["--upsample", "resize", "--normalisation", "robust"],
    "soft-se": ["--upsample", "resize", "--normalisation", "robust", "--soft-from-se"],
    "nogan-grad": ["--upsample", "resize", "--normalisation", "robust", "--soft-from-se", "--lambda-gan", "0",
                   "--lambda-grad", "1000"],
}
V2 = ROWS["nogan-grad"]
ROWS.update({
    "v2": V2,
    "v2-transpose": ["--upsample", "transpose", *V2[2:]],
    "v2-free-soft": [a for a in V2 if a != "--soft-from-se"],
    "v2-window": ["--upsample", "resize", "--lambda-gan", "0", "--lambda-grad", "1000"],
    "v2-no-grad": [*V2[:-2], "--lambda-grad", "0"],
    "v2-consistency": [*(a for a in V2 if a != "--soft-from-se"), "--lambda-consistency", "1000"],
    "v2-laplacian": [*V2[:-2], "--lambda-grad", "0", "--lambda-laplacian", "1000"],
    "v2-msssim": [*V2, "--lambda-msssim", "1000"],
    "v2-msssim-laplacian": [*V2[:-2], "--lambda-grad", "0", "--lambda-laplacian", "1000", "--lambda-msssim", "1000"],
    "v2-head": [*V2, "--head", "8"],
    "v2-ngf24": [*V2, "--ngf", "24"],
    "v2-crops": [*V2, "--batch-size", "8"],
    "v2-depth6": [*V2, "--depth", "6", "--crop", "256"],
})
COMMON = ["--ngf", "16", "--depth", "7", "--lambda-l1", "1000", "--dropout", "0", "--crop", "128", "--batch-size", "2",
          "--seed", "0", "--num-workers", "0", "--val-every", "100", "--val-views", "12", "--no-progress"]


def dexrt(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from dexrt.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("row", choices=list(ROWS))
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--eval", nargs="+", required=True, help="NAME=DATASET:SPLIT")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--scratch", type=Path, default=Path("/tmp/dexrt-ablation"))
    p.add_argument("--steps", type=int, default=1000)
    # everything after "--" goes to `dexrt train` as it is (argparse would take it for this script's options)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    out, run = args.out / args.row, args.scratch / args.row
    shutil.rmtree(run, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    train = ["train", str(args.data), "-o", str(run), "--steps", str(args.steps), *COMMON, *ROWS[args.row],
             *extra, "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    dexrt(*train)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    wall_s = time.perf_counter() - t0
    dexrt("export", str(run / "best"), "-o", str(run / "model.onnx"))
    dexrt("build-engine", str(run / "model.onnx"), "-o", str(run / "model.dexrt"))
    scores = {}
    for spec in args.eval:
        name, rest = spec.split("=", 1)
        dataset, split = rest.rsplit(":", 1)
        dexrt("eval", dataset, "--engine", str(run / "model.dexrt"), "--split", split, "-o", str(run / f"eval-{name}"))
        scores[name] = json.loads((run / f"eval-{name}" / "metrics.json").read_text())["metrics"]
        shutil.copy(run / f"eval-{name}" / "panel.png", out / f"panel-{name}.png")
    shutil.copy(run / "metrics.jsonl", out / "train-log.jsonl")
    shutil.copy(run / "best" / "config.json", out / "config.json")
    result = {"row": args.row, "command": ["dexrt", *train], "steps": args.steps, "cpu_seconds": round(cpu_s, 1),
              "cpu_hours": round(cpu_s / 3600, 3), "wall_seconds": round(wall_s, 1), "scores": scores}
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"row": args.row, "cpu_hours": result["cpu_hours"],
                      **{f"{n}/{k}": round(v, 4) for n, m in scores.items() for k, v in m.items()
                         if k in ("bone/psnr", "bone/ssim", "soft/psnr", "soft/ssim", "bone_suppression")}}))


if __name__ == "__main__":
    main()
