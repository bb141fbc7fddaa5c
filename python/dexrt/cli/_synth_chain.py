"""`dexrt synth`'s options for imaging-chain randomisation, anatomy variation and training pools
(docs/synth.md, "Imaging-chain randomisation"). Defaults come from ChainConfig and AnatomyConfig."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from dexrt.synth.anatomy import AnatomyConfig
from dexrt.synth.chain import ChainConfig

_C, _A = ChainConfig(), AnatomyConfig()


def _fmt(r: tuple[float, float] | None) -> str:
    return "off" if r is None else f"{r[0]:g},{r[1]:g}"


def parse_range(text: str, name: str) -> tuple[float, float] | None:
    """'LO,HI' -> (LO, HI); 'off' -> None; anything else a BadParameter naming the option."""
    if text.strip().lower() == "off":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LO,HI or off, got {text!r}", param_hint=name) from None
    if not lo <= hi:
        raise click.BadParameter(f"expected LO <= HI, got {text!r}", param_hint=name)
    return lo, hi


# (option, ChainConfig field, help); each takes LO,HI or off.
_RANGES = [
    ("--chain-kvp", "kvp", "SE tube voltage, kVp (uniform, 2 kV steps)."),
    ("--chain-cu-mm", "cu_mm", "SE added copper filtration, mm (uniform, 0.05 mm steps)."),
    ("--chain-dose-ugy", "dose_ugy", "SE air kerma at the isocentre, uGy (log-uniform): quantum noise."),
    ("--chain-spr", "spr", "Scatter-to-primary ratio over the body without a grid."),
    ("--chain-scatter-mm", "scatter_sigma_mm", "Scatter kernel (Gaussian) sigma at the detector, mm."),
    ("--chain-blur-mm", "blur_mm", "Detector blur: Gaussian PSF sigma at the detector, mm."),
    ("--chain-electronic", "electronic", "Electronic noise sd / quantum noise sd of the open field."),
    ("--chain-heel", "heel", "Heel effect: fluence drop at the anode-side detector edge (fraction)."),
    ("--chain-collimation-margin", "collimation_margin", "Collimator margin per side, fraction of the detector."),
    ("--chain-gamma", "gamma", "Gamma of a gamma LUT (processed views)."),
    ("--chain-mag", "magnification", "Magnification SDD/SID (floored so the body fits)."),
    ("--chain-sdd", "sdd_mm", "Source-detector distance with --chain-mag, mm."),
]
_PROBS = [
    ("--chain-prob", "prob", "Share of the views that go through the chain; the others keep the fixed protocol."),
    ("--chain-grid-prob", "grid_prob", "Chance of an anti-scatter grid (10:1; Tp 0.7, Ts 0.1)."),
    ("--chain-collimation-prob", "collimation_prob", "Chance of visible collimator edges."),
    ("--chain-marker-prob", "marker_prob", "Chance of a lead L/R marker."),
    ("--chain-processing-prob", "processing_prob", "Chance that the SE is CR/DX-processed (else attenuation)."),
    ("--chain-annotation-prob", "annotation_prob", "Chance of burnt-in text on a processed view."),
]


def chain_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--chain/--no-chain", "chain", default=None,
                     help="Randomise the SE imaging chain per view [default: off; on with --pool]."),
        *[click.option(o, "chain_" + k, default=_fmt(getattr(_C, k)), show_default=True, help=h)
          for o, k, h in _RANGES],
        *[click.option(o, "chain_" + k, type=float, default=getattr(_C, k), show_default=True, help=h)
          for o, k, h in _PROBS],
        click.option("--chain-offset-mm", "offset_mm", type=float, default=_C.offset_mm, show_default=True,
                     help="Aim offset of the central ray, uniform in +-this along rows and columns, mm."),
        click.option("--anatomy/--no-anatomy", "anatomy", default=None,
                     help="Vary the anatomy (size, shape, elastic, bone density) [default: off; on with --pool]."),
        click.option("--anatomy-scale", "scale", default=_fmt(_A.scale), show_default=True,
                     help="Body size factor (LO,HI or off)."),
        click.option("--anatomy-bone", "bone_density", default=_fmt(_A.bone_density), show_default=True,
                     help="Bone density factor (LO,HI or off)."),
        click.option("--anatomy-elastic-mm", "elastic_mm", type=float, default=_A.elastic_mm, show_default=True,
                     help="Elastic displacement sd at 60 mm control points, mm (0: none)."),
        click.option("--anatomy-views", "views_per_anatomy", type=int, default=_A.views_per_anatomy,
                     show_default=True, help="Consecutive views that share one synthetic patient."),
        click.option("--pool", "pool", type=int, default=None,
                     help="Write a train-only pool of N views at random angles inside the train ranges."),
        click.option("--ap-pa-prob", "ap_pa_prob", type=float, default=0.3, show_default=True,
                     help="Pool: share of AP/PA views (gantry 0/180 +-5 deg)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def build(kw: dict[str, Any]) -> tuple[ChainConfig | None, AnatomyConfig | None, int | None, float]:
    """The chain options (popped from `kw`) -> (ChainConfig or None, AnatomyConfig or None, pool, AP/PA share)."""
    pool = kw.pop("pool")
    if pool is not None and pool < 1:
        raise click.BadParameter(f"a pool needs at least 1 view, got {pool}", param_hint="--pool")
    chain_on = kw.pop("chain")
    chain_on = (pool is not None) if chain_on is None else chain_on
    ranges = {k: parse_range(kw.pop("chain_" + k), o) for o, k, _ in _RANGES}
    for k in ("scatter_sigma_mm", "collimation_margin", "gamma", "sdd_mm"):
        if ranges[k] is None:  # these shape a randomisation rather than being one: they need a range
            raise click.BadParameter("needs LO,HI", param_hint=next(o for o, kk, _ in _RANGES if kk == k))
    chain = ChainConfig(**ranges, **{k: kw.pop("chain_" + k) for _, k, _ in _PROBS},  # type: ignore[arg-type]
                        offset_mm=kw.pop("offset_mm"))
    anatomy_on = kw.pop("anatomy")
    anatomy_on = (pool is not None) if anatomy_on is None else anatomy_on
    anatomy = AnatomyConfig(scale=parse_range(kw.pop("scale"), "--anatomy-scale"),
                            bone_density=parse_range(kw.pop("bone_density"), "--anatomy-bone"),
                            elastic_mm=kw.pop("elastic_mm"), views_per_anatomy=kw.pop("views_per_anatomy"))
    chain.validate()
    anatomy.validate()
    return (chain if chain_on else None), (anatomy if anatomy_on else None), pool, kw.pop("ap_pa_prob")
