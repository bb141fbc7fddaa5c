"""The PyTorch side of `dexrt fit` (`dexrt.pipelines.fit.fit.FitTrainer`), backed by the trainer's library
(`dexrt_train`): a step timed on this machine, fine-tuning from a checkpoint for a number of seconds, and the
flip-averaged ONNX export. It lives in the trainer; `dexrt fit`'s command line hands it to the pipeline, which never
imports the trainer."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

TIMED_STEPS = 3
FIRST_CHUNK = 0.1  # of the planned steps: the run's own measure of a step, data loading and validation included
MIN_STEPS = 2


class DexrtTrainer:
    """`FitTrainer` on `dexrt_train` (the fine-tuning keeps the starting checkpoint's recipe: its losses, batch,
    crop and normalisation; only the learning rate, the number of steps and the seed are the fit's)."""

    def __init__(self) -> None:
        self._step_s: float | None = None

    def step_seconds(self, init: Path) -> float:
        """One optimiser step of `init`'s generator on a batch of its recipe's size, timed (the best of the last
        `TIMED_STEPS - 1` steps: the first pays for allocation)."""
        import torch

        from dexrt_train.checkpoint import load_checkpoint, read_config
        from dexrt_train.config import TrainConfig
        from dexrt_train.losses import gradient_l1, ms_ssim

        config = TrainConfig(**read_config(init)["train"])
        G = load_checkpoint(init).generator
        G.train()
        opt = torch.optim.Adam(G.parameters(), lr=1e-6)
        x = torch.rand(config.batch_size, 1, config.crop, config.crop) * 2 - 1
        y = torch.rand(config.batch_size, 2, config.crop, config.crop) * 2 - 1
        times = []
        for _ in range(TIMED_STEPS):
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            out = G(x)
            loss = (out - y).abs().mean() + gradient_l1(out, y) + (1 - ms_ssim(out, y))
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        self._step_s = min(times[1:])
        return self._step_s

    def fine_tune(self, dataset: Path, run: Path, init: Path, *, seconds: float, lr: float, seed: int,
                  progress: bool) -> dict[str, Any]:
        """Fine-tune for about `seconds`: a first chunk of the planned steps measures the real rate, then the
        schedule's length is re-planned from it before each of the following chunks (each ends with a validation
        and a checkpoint, from which the next resumes), so the run ends near its deadline with its learning rate
        decayed."""
        from dexrt_train.checkpoint import read_config
        from dexrt_train.config import TrainConfig
        from dexrt_train.train import run_config, train

        start = time.monotonic()
        deadline = start + seconds
        step_s = self._step_s or self.step_seconds(init)
        planned = max(MIN_STEPS, int(seconds / step_s))
        base = TrainConfig(**read_config(init)["train"])
        config = replace(base, steps=planned, epochs=0, lr=lr, seed=seed, num_workers=0, progress=progress,
                         val_every=max(planned // 4, 1), val_views=0, log_every=10, panel_views=4)
        stop = max(1, int(planned * FIRST_CHUNK))
        t = time.monotonic()
        summary = train(config, dataset, run, stop_at=stop, init=init)
        done, chunks = summary["steps"], 1
        # the loop's own seconds per step (validation included); loading the views and the weights is per chunk
        rate = summary["seconds"] / max(done, 1)
        overhead = max(time.monotonic() - t - summary["seconds"], 0.0)
        while done < planned:
            left = deadline - time.monotonic()
            planned = max(done, min(planned * 4, done + int((left - 2 * overhead) / rate)))
            if planned <= done:
                break
            stop = planned if planned - done < 50 else done + (planned - done) // 2
            t = time.monotonic()
            summary = train(run_config(run, steps=planned, progress=progress), dataset, run, resume=True,
                            stop_at=stop)
            rate = summary["seconds"] / max(summary["steps"] - done, 1)
            overhead = max(time.monotonic() - t - summary["seconds"], 0.0)
            done, chunks = summary["steps"], chunks + 1
        best = run / "best"
        return {"checkpoint": str(best if best.is_dir() else run / "last"), "steps": done, "planned_steps": planned,
                "chunks": chunks, "seconds": round(time.monotonic() - start, 2), "best": summary.get("best"),
                "recipe": {k: getattr(config, k) for k in ("batch_size", "crop", "lambda_l1", "lambda_grad",
                                                          "lambda_msssim", "lambda_gan", "decay_start")}}

    def export(self, checkpoint: Path, onnx: Path, *, pixel_spacing_mm: float) -> dict[str, Any]:
        from dexrt_train.export import export_checkpoint

        return export_checkpoint(checkpoint, onnx, pixel_spacing_mm=pixel_spacing_mm, flip_average=True)
