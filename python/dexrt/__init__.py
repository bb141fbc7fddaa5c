"""dexrt: dual-energy (bone, soft-tissue) X-ray images from one single-energy radiograph.

    >>> import dexrt
    >>> engine = dexrt.Engine("model.dexrt")
    >>> bone, soft = engine.infer(images)  # (H, W) or (N, H, W), uint16 or float32
"""

from __future__ import annotations

try:
    from dexrt import _core
except ImportError as exc:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "dexrt's compiled runtime (dexrt._core) is missing or does not load. dexrt must be installed with its "
        "extension built, e.g. `pip install .` from a source checkout (needs a C++17 compiler and CMake). "
        f"Original error: {exc}"
    ) from exc

from dexrt._errors import BundleError, DexrtError, EngineError, InputError, ModelError
from dexrt.runtime.engine import Engine

__version__: str = _core.__version__

__all__ = ["BundleError", "DexrtError", "Engine", "EngineError", "InputError", "ModelError", "__version__"]
