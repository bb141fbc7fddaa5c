"""`dexrt train`: data layouts, learning, exact resume, checkpoints that export, DDP on CPU, metrics."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import dexrt  # noqa: E402
from dexrt.cli import cli  # noqa: E402
from dexrt.evaluation import metrics  # noqa: E402
from dexrt.io.images import write_image  # noqa: E402
from dexrt.runtime.contract import Encoding  # noqa: E402
from dexrt_train.data import EpochBatchSampler, PairedDataset, dataset_encodings, find_views  # noqa: E402

IDENTITY = Encoding(0.0, 1.0)
from dexrt_train.config import TrainConfig, learning_rate  # noqa: E402
from dexrt_train.losses import consistency_l1, laplacian_l1, ms_ssim  # noqa: E402
from dexrt_train.train import train  # noqa: E402

SIZE = 64
FAST = dict(ngf=4, ndf=4, depth=6, crop=64, num_workers=0, progress=False, val_every=10, log_every=1)


def synthetic_view(rng: np.random.Generator, size: int = SIZE, lesion: bool = True):
    """uint16 (se, bone, soft) and a lesion mask: soft = body + lesion, bone = ribs + spine, SE mixes both."""
    y, x = np.mgrid[0:size, 0:size] / size
    body = np.clip(1.0 - ((x - 0.5) / 0.45) ** 2 - ((y - 0.5) / 0.48) ** 2, 0, None) ** 0.5
    cy, cx = rng.uniform(0.3, 0.7, 2)
    mask = ((y - cy) ** 2 + (x - cx) ** 2 < 0.08**2) & lesion
    soft = 0.6 * body + 0.15 * mask
    phase = rng.uniform(0, 2 * np.pi)
    ribs = (np.sin(2 * np.pi * 6 * y + phase + 2 * (x - 0.5) ** 2) > 0.55) * (body > 0.2)
    spine = np.abs(x - 0.5) < 0.05
    bone = 0.5 * ribs + 0.6 * spine * (body > 0)
    se = 0.55 * soft + 0.45 * bone + rng.normal(0, 0.004, (size, size))
    to16 = lambda a: np.clip(np.rint(a * 40000 + 3000), 0, 65535).astype(np.uint16)  # noqa: E731
    return to16(se), to16(bone), to16(soft), mask


def write_manifest_dataset(root: Path, counts=(("train", 6), ("val", 2), ("test", 1)), seed: int = 0,
                           size: int = SIZE) -> Path:
    """A dataset in docs/dataset-format.md's layout (manifest.json + se/ bone/ soft/ masks/)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for sub in ("se", "bone", "soft", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    views, i = [], 0
    for split, n in counts:
        for _ in range(n):
            vid = f"view_{i:05d}"
            se, bone, soft, mask = synthetic_view(rng, size, lesion=i % 2 == 0)
            files = {}
            for name, image in (("se", se), ("bone", bone), ("soft", soft)):
                files[name] = f"{name}/{vid}.png"
                write_image(root / files[name], image)
            mask_rel = None
            if mask.any():
                mask_rel = f"masks/{vid}.png"
                Image.fromarray((mask * 255).astype(np.uint8)).save(root / mask_rel)
            views.append({"id": vid, "split": split, "files": files, "mask": mask_rel,
                          "geometry": {"gantry_deg": 3.0 * i}, "noise_seed": i})
            i += 1
    enc = {"offset": 0.0, "scale": 1.0 / 40000, "quantity": "synthetic"}
    manifest = {"format": "dexrt-dataset", "format_version": 1, "image_format": "png", "size": [size, size],
                "channels": ["se", "bone", "soft"], "encoding": {c: enc for c in ("se", "bone", "soft")},
                "splits": {}, "source": {}, "physics": {}, "geometry": {"pixel_at_iso_mm": 1.25}, "views": views}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest_dataset(tmp_path_factory.mktemp("data") / "ds")


def read_metrics(run: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


# -- data ---------------------------------------------------------------------------------------------------


def test_manifest_views(dataset: Path) -> None:
    train_views, val_views = find_views(dataset, "train"), find_views(dataset, "val")
    assert [len(train_views), len(val_views)] == [6, 2]
    assert train_views[0].mask is not None and train_views[1].mask is None
    ds = PairedDataset(train_views, [(0, 65535)] * 3, [IDENTITY] * 3, crop=32, hflip=True, seed=1)
    assert ds.cache is not None
    sample = ds[(0, 0)]
    assert sample["se"].shape == (1, 32, 32) and sample["de"].shape == (2, 32, 32)
    assert sample["se"].dtype == torch.float32 and sample["has_mask"]
    assert torch.equal(ds[(0, 0)]["de"], sample["de"])  # same (seed, epoch, index) -> same crop and flip
    assert any(not torch.equal(ds[(e, 0)]["de"], sample["de"]) for e in range(1, 6))


def test_window_keeps_16_bit_precision(tmp_path: Path, dataset: Path) -> None:
    views = find_views(dataset, "train")
    ds = PairedDataset(views, [(0, 65535)] * 3, [IDENTITY] * 3)
    stored = np.asarray(__import__("PIL.Image").Image.open(views[0].files["se"]))
    assert stored.dtype == np.uint16 and len(np.unique(stored)) > 256  # genuinely more than 8 bits
    se = ds[0]["se"][0].numpy().astype(np.float64)
    np.testing.assert_allclose((se + 1) / 2 * 65535, stored, atol=0.02)


def test_samples_are_physical_through_the_dataset_encoding(dataset: Path) -> None:
    """The manifest's encoding (scale 1/40000) is applied before the physical window."""
    encodings = dataset_encodings(dataset)
    assert encodings is not None and encodings["se"] == Encoding(0.0, 1.0 / 40000)
    views = find_views(dataset, "train")
    ds = PairedDataset(views, [(0.0, 2.0)] * 3, [encodings[c] for c in ("se", "bone", "soft")])
    stored = np.asarray(__import__("PIL.Image").Image.open(views[0].files["se"])).astype(np.float64)
    se = ds[0]["se"][0].numpy().astype(np.float64)
    np.testing.assert_allclose(se, stored / 40000 - 1.0, atol=1e-6)


def test_paired_folder_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for split, n in (("train", 3), ("val", 1)):
        for i in range(n):
            se, bone, soft, mask = synthetic_view(rng)
            for name, image in (("se", se), ("bone", bone), ("soft", soft)):
                (tmp_path / split / name).mkdir(parents=True, exist_ok=True)
                write_image(tmp_path / split / name / f"img{i}.tif", image)
    views = find_views(tmp_path, "train")
    assert [v.id for v in views] == ["img0", "img1", "img2"] and find_views(tmp_path, "test") == []
    summary = train(TrainConfig(steps=2, **FAST), tmp_path, tmp_path / "run")
    assert summary["steps"] == 2 and (tmp_path / "run" / "best" / "model.safetensors").exists()
    (tmp_path / "train" / "soft" / "img1.tif").unlink()
    with pytest.raises(ValueError, match="img1"):
        find_views(tmp_path, "train")


def test_sampler_splits_epochs_over_ranks() -> None:
    a, b = (EpochBatchSampler(10, 2, seed=0, rank=r, world=2) for r in (0, 1))
    assert a.batches_per_epoch == 2
    keys = [k for s in (a, b) for batch in s for k in batch]
    assert len(keys) == 8 and len(set(keys)) == 8 and {e for e, _ in keys} == {0}
    a.set_epoch(1, skip=1)
    assert len(list(a)) == 1


def test_learning_rate_schedule() -> None:
    assert learning_rate(0, 100, 2e-4, 0.5) == learning_rate(49, 100, 2e-4, 0.5) == 2e-4
    assert learning_rate(50, 100, 2e-4, 0.5) == pytest.approx(2e-4)
    assert learning_rate(75, 100, 2e-4, 0.5) == pytest.approx(1e-4)
    assert learning_rate(99, 100, 2e-4, 0.5) == pytest.approx(2e-4 / 50)
    assert learning_rate(100, 100, 2e-4, 0.5) == 0.0


# -- training -----------------------------------------------------------------------------------------------


def test_loss_decreases(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(TrainConfig(steps=30, lr=1e-3, **{**FAST, "val_every": 30}), dataset, run)
    l1 = [r["G_l1"] for r in read_metrics(run, "train")]
    assert len(l1) == 30
    assert np.mean(l1[-5:]) < 0.7 * np.mean(l1[:5])
    (val,) = read_metrics(run, "val")
    assert {"bone/psnr", "bone/ssim", "bone/mae", "soft/psnr", "soft/ssim", "soft/mae", "bone_suppression",
            "cnr/se", "cnr/soft_true", "cnr/soft_pred"} <= set(val)
    assert (run / "samples" / "step_0000030.png").exists()
    options = (run / "options.txt").read_text()
    assert "lr: 0.001\t[default: 0.0002]" in options


def test_resume_is_bitwise_identical(dataset: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=12, **{**FAST, "val_every": 5, "batch_size": 2})
    train(config, dataset, tmp_path / "straight")
    # an interrupted run, then resumed to 12
    train(config, dataset, tmp_path / "resumed", stop_at=7)  # stops after step 7, in the middle of epoch 2
    train(config, dataset, tmp_path / "resumed", resume=True)
    for name in ("model.safetensors", "discriminator.safetensors", "optimizer.safetensors"):
        a = (tmp_path / "straight" / "last" / name).read_bytes()
        b = (tmp_path / "resumed" / "last" / name).read_bytes()
        assert a == b, name
    straight = [r for r in read_metrics(tmp_path / "straight", "train")]
    resumed = [r for r in read_metrics(tmp_path / "resumed", "train")]
    assert [r["G_l1"] for r in straight] == [r["G_l1"] for r in resumed]


def test_resume_refuses_changed_options(dataset: Path, tmp_path: Path) -> None:
    train(TrainConfig(steps=2, **FAST), dataset, tmp_path / "run")
    with pytest.raises(ValueError, match="ngf"):
        train(TrainConfig(steps=4, **{**FAST, "ngf": 8}), dataset, tmp_path / "run", resume=True)
    with pytest.raises(ValueError, match="--resume"):
        train(TrainConfig(steps=4, **FAST), dataset, tmp_path / "run")
    with pytest.raises(ValueError, match="nothing to resume"):
        train(TrainConfig(steps=4, **FAST), dataset, tmp_path / "other", resume=True)


def test_init_fine_tunes_from_a_checkpoint(dataset: Path, tmp_path: Path) -> None:
    """--init starts from another run's generator (recorded in the new checkpoints); a checkpoint of another
    architecture is refused with what differs, and --init cannot be combined with --resume."""
    from safetensors.torch import load as st_load

    train(TrainConfig(steps=3, **FAST), dataset, tmp_path / "base")
    base = tmp_path / "base" / "last"
    tuned = TrainConfig(steps=1, **{**FAST, "lr": 0.0})  # a zero learning rate keeps the start's weights
    train(tuned, dataset, tmp_path / "tuned", init=base)
    a = st_load((base / "model.safetensors").read_bytes())
    b = st_load((tmp_path / "tuned" / "last" / "model.safetensors").read_bytes())
    for k in a:
        if "running" not in k and "num_batches" not in k:  # batch-norm statistics move in train mode
            assert torch.equal(a[k], b[k]), k
    config = json.loads((tmp_path / "tuned" / "last" / "config.json").read_text())
    assert config["init"]["checkpoint"] == str(base) and config["init"]["model_hash"].startswith("sha256:")
    with pytest.raises(ValueError, match=r"ngf 4 \(this run: 8\)"):
        train(TrainConfig(steps=1, **{**FAST, "ngf": 8}), dataset, tmp_path / "wide", init=base)
    with pytest.raises(ValueError, match="input window"):  # the same weights would read other values
        train(TrainConfig(steps=1, **{**FAST, "windows": "data"}), dataset, tmp_path / "rewindowed", init=base)
    result = CliRunner().invoke(cli, ["train", str(dataset), "-o", str(tmp_path / "base"), "--resume", "--init",
                                      str(base)])
    assert result.exit_code == 2 and "--init starts a new run" in result.output


def test_without_val_split_only_last_is_written(tmp_path: Path) -> None:
    data = write_manifest_dataset(tmp_path / "ds", counts=(("train", 2),))
    summary = train(TrainConfig(steps=2, **FAST), data, tmp_path / "run")
    assert summary["best"] is None
    assert (tmp_path / "run" / "last" / "model.safetensors").exists() and not (tmp_path / "run" / "best").exists()
    assert read_metrics(tmp_path / "run", "val") == []


def test_cli_train_then_export_best(dataset: Path, tmp_path: Path) -> None:
    run, onnx_path = tmp_path / "run", tmp_path / "best.onnx"
    args = ["train", str(dataset), "-o", str(run), "--steps", "4", "--ngf", "4", "--ndf", "4", "--depth", "6",
            "--crop", "64", "--num-workers", "0", "--val-every", "2", "--windows", "data", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 4 and summary["best"]["metric"] == "mae"
    assert sorted(p.name for p in (run / "best").iterdir()) == ["config.json", "model.safetensors", "state.json"]
    result = CliRunner().invoke(cli, ["export", str(run / "best"), "-o", str(onnx_path)])
    assert result.exit_code == 0, result.output
    from dexrt_train.export import read_metadata

    meta = read_metadata(onnx_path)
    lo, hi = meta["input"]["window"]
    assert 0 < lo < hi < 65535 and meta["size_multiple"] == 64  # windows from the data, recorded and exported
    assert meta["pixel_spacing_mm"] == 1.25  # the dataset's pixel at the isocentre, for `dexrt infer`
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"se": np.zeros((2, 1, 64, 128), np.float32)})
    assert y.shape == (2, 2, 64, 128) and np.isfinite(y).all()
    # --resume extends the run; other options are refused
    result = CliRunner().invoke(cli, ["train", str(dataset), "-o", str(run), "--resume", "--steps", "6",
                                      "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "last" / "state.json").read_text())["step"] == 6
    result = CliRunner().invoke(cli, ["train", str(dataset), "-o", str(run), "--resume", "--ngf", "8"])
    assert result.exit_code == 1 and "ngf" in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_on_cpu(dataset: Path, tmp_path: Path) -> None:
    # Also the test of loader worker processes: they run here, in subprocesses, because a multi-worker
    # DataLoader installs a SIGCHLD handler in its process, which has crashed the test process when a later
    # subprocess exited.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *_ddp_train_args(dataset, tmp_path / "run", num_workers=2)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_ddp_env(), check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_ddp_run(result.stdout, tmp_path / "run")


def test_ddp_two_nodes_rendezvous_on_cpu(dataset: Path, tmp_path: Path) -> None:
    """docs/distributed.md's multi-node command: one torchrun per node, joined by a c10d rendezvous. Here both
    "nodes" are this machine, each one process; the store is hosted by whichever launch binds the port first."""
    endpoint = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "dexrt-test",
           *_ddp_train_args(dataset, tmp_path / "run", num_workers=0)]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ddp_env())
             for _ in range(2)]
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    printed = [stdout for stdout, _ in outputs if stdout.strip()]
    assert len(printed) == 1  # global rank 0 alone prints, on whichever node it landed
    _check_ddp_run(printed[0], tmp_path / "run")


def _ddp_train_args(dataset: Path, run: Path, *, num_workers: int) -> list[str]:
    dexrt_script = Path(sys.executable).parent / "dexrt"
    return [str(dexrt_script), "train", str(dataset), "-o", str(run), "--steps", "3", "--ngf", "4", "--ndf", "4",
            "--depth", "6", "--crop", "64", "--num-workers", str(num_workers), "--val-every", "3", "--device",
            "cpu", "--json"]


def _ddp_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _check_ddp_run(stdout: str, run: Path) -> None:
    summary = json.loads(stdout)  # only rank 0 prints
    assert summary["world_size"] == 2 and summary["steps"] == 3
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["step"] == 3 and state["world_size"] == 2


# -- metrics ------------------------------------------------------------------------------------------------


def test_psnr_of_known_mse() -> None:
    a = np.zeros((16, 16))
    b = np.full((16, 16), 0.1)  # MSE 0.01 -> 20 dB at data range 1
    assert metrics.psnr(b, a) == pytest.approx(20.0)
    assert metrics.psnr(a, a) == math.inf
    assert metrics.mae(b, a) == pytest.approx(0.1)


def test_ssim() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((48, 40))
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img + rng.normal(0, 0.2, img.shape), 0, 1)
    assert 0 < metrics.ssim(noisy, img) < 0.9
    # constant images: luminance term only, (2*0.2*0.6 + c1) / (0.2^2 + 0.6^2 + c1)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert metrics.ssim(np.full((20, 20), 0.2), np.full((20, 20), 0.6)) == pytest.approx(expected)


def test_ssim_and_psnr_agree_with_scikit_image() -> None:
    # reference values from skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=1.0) and peak_signal_noise_ratio(a, b, data_range=1.0)
    rng = np.random.default_rng(0)
    a = rng.random((96, 80))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert metrics.ssim(b, a) == pytest.approx(0.9461759391426161, abs=1e-12)
    assert metrics.psnr(b, a) == pytest.approx(20.48422458662514, abs=1e-10)


def test_cnr_of_a_disc() -> None:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:128, 0:128]
    disc = (y - 64) ** 2 + (x - 64) ** 2 < 20**2
    image = np.where(disc, 0.8, 0.5) + rng.normal(0, 0.05, (128, 128)) * ~disc
    assert metrics.cnr(image, disc) == pytest.approx(0.3 / 0.05, rel=0.05)
    ring = metrics.background_ring(disc)
    assert not (ring & disc).any() and ring.sum() > 2000
    assert math.isnan(metrics.cnr(image, np.zeros_like(disc)))


def test_bone_suppression() -> None:
    rng = np.random.default_rng(2)
    se, bone, soft, _ = (np.asarray(a, np.float64) / 65535 for a in synthetic_view(rng, 64))
    assert metrics.bone_suppression(soft, se, bone, soft) == pytest.approx(1.0)
    assert metrics.bone_suppression(se, se, bone, soft) == pytest.approx(0.0)
    half = soft + 0.5 * (se - soft)  # half the SE's bone signal left
    assert metrics.bone_suppression(half, se, bone, soft) == pytest.approx(0.5, abs=0.01)


def test_error_bands_put_each_error_at_its_scale() -> None:
    """Pixel-scale error lands in the finest band, an offset in the coarsest, a 40-px wave in the 32-64 px band;
    the bands add up to the MSE."""
    true = np.zeros((128, 128))
    y, x = np.mgrid[:128, :128]
    bands = metrics.error_bands(np.where((x + y) % 2 == 0, 0.1, -0.1), true)
    assert len(bands) == len(metrics.ERROR_BAND_WAVELENGTHS) + 1
    assert bands[0] == pytest.approx(0.01) and bands[1:].sum() < 1e-12
    offset = metrics.error_bands(np.full((128, 128), 0.05), true)
    assert offset[-1] == pytest.approx(0.05**2) and offset[:-1].sum() < 1e-12
    wave = metrics.error_bands(0.1 * np.sin(2 * np.pi * x / 40), true)
    assert wave.argmax() == 4 and wave[4] / wave.sum() > 0.9
    noise = np.random.default_rng(0).normal(0, 0.1, (128, 96))
    assert metrics.error_bands(noise, true[:, :96]).sum() == pytest.approx(np.mean(noise**2), rel=1e-9)


def test_bone_suppression_ratio() -> None:
    """1 - |S_pred - S|^2 / |B|^2 in SE units: 1 for the true soft image, 0 for one that keeps all the bone (the
    SE image less the soft part's offset), 0.75 when half the bone is left; the unit of the images does not matter."""
    rng = np.random.default_rng(5)
    bone = np.clip(rng.normal(1.0, 1.0, (64, 64)), 0, None)
    soft = 20 + 5 * rng.random((64, 64))
    se = 0.05 + 0.29 * bone + 0.2 * soft
    assert metrics.bone_suppression_ratio(soft, se, bone, soft) == pytest.approx(1.0)
    keeps_bone = soft + 0.29 / 0.2 * bone
    assert metrics.bone_suppression_ratio(keeps_bone, se, bone, soft) == pytest.approx(0.0, abs=1e-9)
    half = soft + 0.5 * 0.29 / 0.2 * bone
    assert metrics.bone_suppression_ratio(half, se, bone, soft) == pytest.approx(0.75, abs=1e-9)
    windowed = [(x - lo) / (hi - lo) for x, (lo, hi) in ((half, (-4, 41)), (se, (-1, 9)), (bone, (-2.5, 7.5)),
                                                         (soft, (-4, 41)))]
    assert metrics.bone_suppression_ratio(*windowed, no_bone=0.25) == pytest.approx(0.75, abs=1e-9)


def test_predict_pads_like_the_runtime() -> None:
    from dexrt_train.networks import GeneratorConfig, define_G
    from dexrt_train.validate import predict

    g = define_G(GeneratorConfig(ngf=4, depth=6)).eval()
    se = torch.rand(1, 1, 40, 100) * 2 - 1  # padded to 64 x 128: wider than the image on one axis
    y = predict(g, se, 64, torch.autocast("cpu", enabled=False))
    padded = np.pad(se.numpy(), ((0, 0), (0, 0), (12, 12), (14, 14)), mode="reflect")
    with torch.no_grad():
        expected = g(torch.from_numpy(padded))[..., 12:52, 14:114]
    assert y.shape == (1, 2, 40, 100)
    torch.testing.assert_close(y, expected)


def test_cli_help_states_the_config_defaults() -> None:
    import re

    from dataclasses import fields

    from dexrt.cli.train import train as command

    names = {f.name for f in fields(TrainConfig)}
    # every option is a TrainConfig field, but for those that say where and how this invocation runs
    invocation = {"dataset", "run", "resume", "init", "stop_at", "as_json", "val_data"}
    assert {p.name for p in command.params} - invocation <= names
    default = TrainConfig(steps=1)
    checked = 0
    for param in command.params:
        m = re.search(r"\[([^\]:]+)\]\.?$", getattr(param, "help", "") or "")
        if param.name not in names or not m:
            continue
        stated, actual = m.group(1), getattr(default, param.name)
        if isinstance(actual, bool):
            assert stated == ("on" if actual else "off"), param.name
        elif isinstance(actual, (int, float)):
            assert float(stated) == actual, param.name
        else:
            assert stated == actual, param.name
        checked += 1
    assert checked >= 20


def test_normalised_targets_are_the_parts_of_the_se_image(dataset: Path) -> None:
    """With `normalise`, SE and targets share one affine map per view and bone + soft ~ SE in those units."""
    views = find_views(dataset, "train")
    encodings = dataset_encodings(dataset)
    ds = PairedDataset(views, [(-0.25, 1.25)] * 3, [encodings[c] for c in ("se", "bone", "soft")], normalise=True)
    sample = ds[0]
    unit = lambda t: (t.numpy().astype(np.float64) + 1) / 2 * 1.5 - 0.25  # noqa: E731  window (-0.25, 1.25)
    se, (bone, soft) = unit(sample["se"][0]), unit(sample["de"])
    assert np.percentile(se[8:-8, 8:-8], 1) == pytest.approx(0.0, abs=0.02)  # lo -> 0, hi -> 1 over the core
    assert np.abs(bone + soft - se).mean() < 0.02 * np.abs(se).mean()
    lo, span, a, kb, ks = sample["norm"].numpy()
    assert span > 0 and kb > 0 and ks > 0


def test_robust_run_exports_a_normalised_engine_that_eval_scores(tmp_path: Path, dataset: Path) -> None:
    from helpers import build_bundle

    from dexrt.evaluation.evaluate import evaluate
    from dexrt.runtime.contract import NORMALISATION
    from dexrt_train.export import export_checkpoint

    # the Model v2 options together: scale-free input, resize upsampling, soft from SE, no GAN, gradient loss
    train(TrainConfig(steps=2, normalisation="robust", upsample="resize", soft_from_se=True, lambda_gan=0.0,
                      lambda_grad=10.0, **FAST), dataset, tmp_path / "run")
    logged = read_metrics(tmp_path / "run", "train")
    assert "G_grad" in logged[0] and "D_real" not in logged[0] and "G_gan" not in logged[0]
    meta = export_checkpoint(tmp_path / "run" / "last", tmp_path / "m.onnx")
    assert meta["model"]["soft_from_se"] and meta["model"]["upsample"] == "resize"
    assert meta["input"]["normalisation"] == NORMALISATION and "encoding" not in meta["input"]
    engine = dexrt.Engine(build_bundle(tmp_path / "m.onnx", tmp_path / "m.dexrt"))
    assert engine.normalised and engine.input_encoding is None
    result = evaluate(engine, dataset, split="val")
    assert result["views"] == 2
    assert all(np.isfinite(result["metrics"][k]) for k in ("bone/psnr", "soft/psnr", "bone/mae", "soft/mae"))


def test_consistency_term_measures_how_far_the_parts_are_from_adding_up(dataset: Path, tmp_path: Path) -> None:
    """Variant (c) of the output parametrisation: free bone and soft, with an L1 of SE - (bone + soft)."""
    views, enc = find_views(dataset, "train"), dataset_encodings(dataset)
    ds = PairedDataset(views, [(-0.25, 1.25)] * 3, [enc[c] for c in ("se", "bone", "soft")], normalise=True)
    sample = ds[0]
    se, de = sample["se"][None], sample["de"][None]
    # the targets' parts add up to the SE image up to the fit's residual; a soft image shifted by 0.1 does not
    assert float(consistency_l1(se, de)) < 0.02
    shifted = de.clone()
    shifted[:, 1] += 0.1
    assert float(consistency_l1(se, shifted)) == pytest.approx(0.1, abs=0.02)
    train(TrainConfig(steps=2, normalisation="robust", lambda_gan=0.0, lambda_consistency=5.0, **FAST), dataset,
          tmp_path / "run")
    assert "G_consistency" in read_metrics(tmp_path / "run", "train")[0]
    with pytest.raises(ValueError, match="needs normalisation 'robust'"):
        TrainConfig(steps=1, lambda_consistency=1.0)


def test_laplacian_term_sees_each_scale(dataset: Path, tmp_path: Path) -> None:
    """A smooth offset costs nothing in any band; a 1 px checkerboard and an 8 px blob each cost their band."""
    torch.manual_seed(0)
    target = torch.rand(1, 2, 64, 64)
    assert float(laplacian_l1(target + 0.3, target)) < 1e-6
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 0.2 - 0.1
    assert float(laplacian_l1(target + checker, target)) > 0.02
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    blob = 0.2 * torch.exp(-((y - 32) ** 2 + (x - 32) ** 2) / (2 * 4.0**2))
    assert float(laplacian_l1(target + blob, target)) > 1e-4
    train(TrainConfig(steps=2, lambda_gan=0.0, lambda_laplacian=10.0, **FAST), dataset, tmp_path / "run")
    assert "G_laplacian" in read_metrics(tmp_path / "run", "train")[0]


def test_ms_ssim_is_one_for_the_same_image_and_falls_with_noise(dataset: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    y, x = torch.meshgrid(torch.linspace(-1, 1, 96), torch.linspace(-1, 1, 96), indexing="ij")
    target = (0.6 * torch.sin(6 * x) * torch.cos(4 * y))[None, None]
    assert float(ms_ssim(target, target)) == pytest.approx(1.0, abs=1e-5)
    noisy = [target + s * torch.randn_like(target) for s in (0.05, 0.2)]
    scores = [float(ms_ssim(n, target)) for n in noisy]
    assert 1.0 > scores[0] > scores[1] > 0.0
    train(TrainConfig(steps=2, lambda_gan=0.0, lambda_msssim=10.0, **FAST), dataset, tmp_path / "run")
    assert "G_msssim" in read_metrics(tmp_path / "run", "train")[0]


def test_validation_views_from_another_dataset(tmp_path: Path, dataset: Path) -> None:
    """A pool has train views only: `--val-data` takes the val split from a second dataset."""
    pool = write_manifest_dataset(tmp_path / "pool", counts=(("train", 4),), seed=5)
    result = CliRunner().invoke(cli, ["train", str(pool), "-o", str(tmp_path / "run"), "--steps", "2", "--ngf", "4",
                                      "--ndf", "4", "--depth", "6", "--crop", "64", "--num-workers", "0",
                                      "--val-every", "2", "--no-progress", "--val-data", str(dataset)])
    assert result.exit_code == 0, result.output
    assert read_metrics(tmp_path / "run", "val")  # validated on the other dataset's 2 val views
