"""Engines shipped with dexrt. `default.dexrt` is the model trained by this project on its own physics-based
DRRs of one chest CT (see docs/model-card.md): research use only, not validated on real radiographs."""

from __future__ import annotations

from pathlib import Path

from dexrt._errors import EngineError

DEFAULT_ENGINE = Path(__file__).with_name("default.dexrt")
# its generator's weights and config (a `dexrt train` checkpoint): fine-tune with `dexrt train --init default`
DEFAULT_CHECKPOINT = Path(__file__).with_name("default-checkpoint")


def resolve_engine(path: Path | None) -> Path:
    """The given engine, or the bundled default one."""
    if path is not None:
        return path
    if not DEFAULT_ENGINE.is_file():
        raise EngineError(f"no engine given and the bundled default engine is missing ({DEFAULT_ENGINE}); "
                          "pass --engine model.dexrt")
    return DEFAULT_ENGINE
