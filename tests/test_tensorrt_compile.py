"""The TensorRT backend and its bindings compiled against NVIDIA's public TensorRT headers (no link, no GPU).

No TensorRT SDK can be installed on the machines that run this suite, so without this check the TensorRT code
would only ever be compiled on a GPU machine. The headers come from ``../shared/third_party/tensorrt-11.1``
(beside the repository) or ``DEXRT_TENSORRT_HEADERS``; the CUDA toolkit provides the CUDA headers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _headers() -> Path | None:
    given = os.environ.get("DEXRT_TENSORRT_HEADERS")
    candidates = [Path(given)] if given else [ROOT.parent / "shared" / "third_party" / "tensorrt-11.1" / "include"]
    return next((p for p in candidates if (p / "NvInfer.h").is_file()), None)


def _tool(name: str) -> str | None:
    here = Path(sys.executable).parent / name  # the venv's cmake/ninja wheels first
    return str(here) if here.is_file() else shutil.which(name)


def test_tensorrt_backend_compiles_against_the_real_headers(tmp_path: Path) -> None:
    headers = _headers()
    cmake, ninja, nvcc = _tool("cmake"), _tool("ninja"), shutil.which("nvcc")
    missing = [n for n, v in (("TensorRT headers", headers), ("cmake", cmake), ("ninja", ninja), ("nvcc", nvcc))
               if v is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    import openvino.utils
    import pybind11

    configure = [
        cmake, "-S", str(ROOT), "-B", str(tmp_path), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
        "-DSKBUILD_PROJECT_NAME=dexrt", "-DSKBUILD_PROJECT_VERSION=0.0.0", f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DOpenVINO_DIR={openvino.utils.get_cmake_path()}",
        "-DDEXRT_WITH_CUDA=ON", "-DDEXRT_WITH_TENSORRT=OFF", f"-DDEXRT_TENSORRT_HEADERS={headers}",
        "-DCMAKE_CUDA_ARCHITECTURES=75-real", "-DDEXRT_WERROR=ON",
    ]
    run = subprocess.run(configure, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "TensorRT compile check: target dexrt_tensorrt_compile_check" in run.stdout
    build = [cmake, "--build", str(tmp_path), "--target", "dexrt_tensorrt_compile_check", "-j", "2"]
    run = subprocess.run(build, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-4000:]
    objects = sorted(p.name for p in tmp_path.rglob("*.o") if "dexrt_tensorrt_compile_check" in str(p))
    assert objects == ["register_cuda.cpp.o", "register_engine.cpp.o", "tensorrt_backend.cpp.o"]
