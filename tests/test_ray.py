"""`dexrt infer --ray` and dexrt.pipelines.distributed on a local Ray cluster of 2 CPUs: the same files as a local
run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'dexrt[ray]')")

from dexrt.cli import cli  # noqa: E402
from dexrt.io.layout import find_images  # noqa: E402
from dexrt.pipelines.distributed import RayConverter, convert_folder_ray  # noqa: E402
from dexrt.io.images import read_image, write_image  # noqa: E402
from infer_helpers import make_dicom, marked_image  # noqa: E402

# Ray Data's own DataContext warns about its own deprecated fields when it is set up.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray instance for the module (starting one takes seconds); the code under test finds it
    running and uses it, as it does inside a Ray job."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PNG, TIFF and DICOM radiographs of odd sizes, in two folders, and one corrupt file."""
    src = tmp_path_factory.mktemp("ray") / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        write_image(src / f"p{i}.png", (rng.random((40 + i, 56)) * 60000).astype(np.uint16))
    write_image(src / "t.tif", (rng.random((33, 47)) * 60000).astype(np.uint16))
    write_image(src / "sub" / "s.png", (rng.random((40, 40)) * 60000).astype(np.uint16))
    make_dicom(src / "sub" / "d.dcm", marked_image((40, 56), 4095), bits=12, photometric="MONOCHROME1")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return src


@pytest.fixture(scope="module")
def single(plain_engine_path: Path, folder: Path) -> tuple[Path, dict]:
    """The reference: a single-process `dexrt infer` of the folder."""
    out = folder.parent / "single"
    result = run("infer", folder, "-o", out, "--engine", plain_engine_path, "-r", "--json")
    assert result.exit_code == 1, result.output  # the corrupt file
    return out, json.loads(result.stdout)


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def assert_same_outputs(out: Path, reference: Path) -> None:
    """PNG and TIFF outputs byte for byte (pixels and provenance); DICOM outputs pixel for pixel and series
    (a new instance UID and creation time each time by design)."""
    import pydicom

    assert files(out) == files(reference)
    for name in files(reference):
        if name.endswith(".dcm"):
            a, b = pydicom.dcmread(out / name), pydicom.dcmread(reference / name)
            np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
            assert a.SeriesInstanceUID == b.SeriesInstanceUID
            assert a.DerivationDescription == b.DerivationDescription
        else:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_python_entry_point_equals_local_run(plain_engine_path: Path, folder: Path, single: tuple[Path, dict],
                                             tmp_path: Path) -> None:
    reference, summary = single
    out = tmp_path / "out"
    outcomes = convert_folder_ray(folder, out, engine=plain_engine_path, recursive=True, actors=2, batch_size=2)
    assert [o.source for o in outcomes] == find_images(folder, recursive=True)  # input order
    assert_same_outputs(out, reference)
    by_name = {o.source.name: o for o in outcomes}
    broken = by_name.pop("broken.png")
    assert broken.status == "failed" and broken.outputs == [] and f"{folder / 'broken.png'}:" in broken.error
    assert all(o.status == "converted" for o in by_name.values())
    assert by_name["d.dcm"].outputs == [out / "sub" / "d_bone.dcm", out / "sub" / "d_soft.dcm"]
    local = {Path(f["source"]).name: f for f in summary["files"]}
    assert broken.error == local["broken.png"]["error"]
    assert all(o.geometry == local[name]["geometry"] for name, o in by_name.items())


def test_cli_equals_local_run_and_resumes(plain_engine_path: Path, folder: Path, single: tuple[Path, dict],
                                          tmp_path: Path) -> None:
    reference, local = single
    out = tmp_path / "out"
    result = run("infer", folder, "-o", out, "--engine", plain_engine_path, "-r", "--json", "--ray", "local",
                 "--ray-actors", "2")
    assert result.exit_code == 1, result.output  # the corrupt file, as in the local run
    summary = json.loads(result.stdout)  # stdout holds the JSON only: Ray's logs went to stderr
    assert_same_outputs(out, reference)
    assert summary["ray"]["actors"] == 2 and 1 <= summary["ray"]["workers"] <= 2
    assert (summary["backend"], summary["device"]) == (local["backend"], local["device"])
    for key in ("files_found", "converted", "skipped", "failed", "resampling", "model_spacing_mm"):
        assert summary[key] == local[key], key
    for mine, theirs in zip(summary["files"], local["files"], strict=True):
        assert mine["source"] == theirs["source"] and mine["status"] == theirs["status"]
        assert mine["error"] == theirs["error"] and mine["geometry"] == theirs["geometry"]
        assert [Path(p).relative_to(out) for p in mine["outputs"]] == [
            Path(p).relative_to(reference) for p in theirs["outputs"]]
    assert f"Error: {folder / 'broken.png'}" in result.stderr

    result = run("infer", folder, "-o", out, "--engine", plain_engine_path, "-r", "--ray", "local")  # resumed
    assert result.exit_code == 1, result.output
    assert "Converted 0 of 8 images (1 failed), skipped 7 already converted" in result.stdout


def test_an_output_never_overwrites_an_input_of_another_batch(plain_engine_path: Path, tmp_path: Path) -> None:
    """x.png's output x_bone.png is itself an input; with one file per batch they meet in different actors,
    which must still refuse it, as a local run does."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("x.png", "x_bone.png", "y.png"):
        write_image(src / name, np.full((16, 16), 1000, np.uint16))
    before = (src / "x_bone.png").read_bytes()
    outcomes = convert_folder_ray(src, src, engine=plain_engine_path, actors=2, batch_size=1)
    status = {o.source.name: (o.status, o.error) for o in outcomes}
    assert status["x.png"][0] == "failed" and "would overwrite an input" in status["x.png"][1]
    assert status["x_bone.png"][0] == status["y.png"][0] == "converted"
    assert (src / "x_bone.png").read_bytes() == before
    np.testing.assert_array_equal(read_image(src / "y_bone.png").shape, (16, 16))


def test_outputs_claimed_twice_fail_before_the_actors_and_reruns_in_place_resume(plain_engine_path: Path,
                                                                                 tmp_path: Path) -> None:
    """a.png and a.tiff both claim a_preview.png; in different actors' batches the driver still fails the later
    one, and a rerun into the same folder never takes the first run's outputs as inputs."""
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", np.full((16, 16), 1000, np.uint16))
    write_image(src / "a.tiff", np.full((16, 16), 2000, np.uint16))
    for attempt in ("first", "rerun"):
        outcomes = convert_folder_ray(src, src, engine=plain_engine_path, actors=2, batch_size=1, preview=True)
        status = {o.source.name: (o.status, o.error) for o in outcomes}
        assert set(status) == {"a.png", "a.tiff"}, attempt
        assert status["a.png"][0] == ("converted" if attempt == "first" else "skipped")
        assert status["a.tiff"][0] == "failed" and str(src / "a.png") in status["a.tiff"][1]
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "a.tiff", "a_bone.png", "a_preview.png", "a_soft.png"]


def test_options_are_checked_before_ray_starts(plain_engine_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        RayConverter(tmp_path, engine=plain_engine_path, batch_size=0)
    from dexrt import BundleError

    (tmp_path / "bad.dexrt").write_bytes(b"not a bundle")
    with pytest.raises(BundleError):
        RayConverter(tmp_path, engine=tmp_path / "bad.dexrt")
    result = run("infer", tmp_path, "-o", tmp_path / "o", "--ray-actors", "2")
    assert result.exit_code == 2 and "--ray-actors needs --ray" in result.output


def test_an_engine_the_actors_cannot_load_is_an_error(plain_engine_path: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", np.zeros((16, 16), np.uint16))
    # A CPU bundle asked to run on the GPU: refused by the Engine inside the actor, reported as itself.
    result = run("infer", tmp_path / "a.png", "-o", tmp_path / "o", "--engine", plain_engine_path, "--device",
                 "gpu", "--ray", "local", "--ray-actors", "1")
    assert result.exit_code == 1 and "Error:" in result.stderr and "CPU (OpenVINO) engine" in result.stderr


BLOCK_RAY = """
import sys
class _NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray is blocked in this test")
        return None
"""


def test_dexrt_does_not_import_ray_and_names_the_extra_when_missing(plain_engine_path: Path,
                                                                     tmp_path: Path) -> None:
    code = BLOCK_RAY + f"""
import dexrt, dexrt.pipelines.distributed, dexrt.cli.infer
assert "ray" not in sys.modules, "importing dexrt imported ray"
sys.meta_path.insert(0, _NoRay())
from click.testing import CliRunner
from dexrt.cli import cli
result = CliRunner().invoke(cli, ["infer", {str(tmp_path)!r}, "-o", {str(tmp_path / "o")!r}, "--engine",
                                  {str(plain_engine_path)!r}, "--ray", "local"])
print(result.exit_code)
print(result.stderr)
"""
    (tmp_path / "a.png").write_bytes(b"")  # never read: the missing extra is reported first
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    code, stderr = result.stdout.split("\n", 1)
    assert code == "1" and "pip install 'dexrt[ray]'" in stderr, stderr


def test_interrupted_run_leaves_no_partial_output_and_rerun_finishes(plain_engine_path: Path,
                                                                      tmp_path: Path) -> None:
    """Ctrl-C stops a `dexrt infer --ray local` run (its own Ray instance, in a child process): exit code 130,
    every output present is complete, and the same command finishes the rest (removing any temporary left by
    an actor killed while writing)."""
    import signal
    import time

    from dexrt import Engine

    src = tmp_path / "in"
    src.mkdir()
    for i in range(160):
        write_image(src / f"img{i:04d}.png", (np.random.default_rng(i).random((48, 48)) * 60000).astype(np.uint16))
    out = tmp_path / "out"
    args = ["infer", str(src), "-o", str(out), "--engine", str(plain_engine_path), "--ray", "local",
            "--ray-actors", "1", "--jobs", "1"]
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from dexrt.cli import main; sys.argv[0] = 'dexrt'; main()")
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and sum(1 for _ in out.glob("*_soft.png")) >= 10):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no outputs appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()[-3000:]
    assert "Interrupted:" in stderr.decode()
    finished = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(finished) < 2 * 160, "the run ended before it was interrupted"
    engine = Engine(plain_engine_path)
    for output in finished:  # every output present is complete and right
        stem, channel = output.stem.rsplit("_", 1)
        want = engine.infer(read_image(src / f"{stem}.png"))[engine.channels.index(channel)]
        np.testing.assert_array_equal(read_image(output), want)

    result = run(*args[:-6], "--json", "--ray", "local")  # in this process: the fixture's Ray instance
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["converted"] + summary["skipped"] == 160 and summary["skipped"] >= 10
    assert sorted(p.name for p in out.iterdir()) == sorted(f"img{i:04d}_{c}.png" for i in range(160)
                                                          for c in ("bone", "soft"))
