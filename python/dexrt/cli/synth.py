"""`dexrt synth`: a dual-energy DRR dataset (SE, bone, soft) from a CT."""

from __future__ import annotations

import json
import sys
from typing import cast

import click

from dexrt.cli._synth_chain import build as build_chain
from dexrt.cli._synth_chain import chain_options
from dexrt.synth.physics import PhysicsConfig
from dexrt.synth.render import ImagingConfig

# The defaults of the imaging geometry and the protocols are the library's (one home: the config dataclasses).
_IMAGING, _PHYSICS = ImagingConfig(), PhysicsConfig()


def _floats(text: str, n: int, name: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected {n} comma-separated numbers, got {text!r}", param_hint=name) from None
    if len(vals) != n:
        raise click.BadParameter(f"expected {n} comma-separated numbers, got {text!r}", param_hint=name)
    return vals


def _ints3(values: tuple[float, ...]) -> tuple[int, int, int]:
    return (int(values[0]), int(values[1]), int(values[2]))


@click.command("synth")
@click.option("--ct", "ct_paths", required=True, multiple=True,
              help="CT: a NIfTI, NRRD or MetaImage file, a DICOM series (folder, or one file of it), or a catalogue "
                   "name (example, pyradiomics-lung1, pyradiomics-lung2, platipy-chest, totalsegmentator-cta). Repeat "
                   "for a dataset of several patients.")
@click.option("--labels", "labels_paths", multiple=True, type=click.Path(dir_okay=False),
              help="Label map on the CT's grid (NIfTI, NRRD, MetaImage); one per --ct, in order, when given.")
@click.option("--contrast", type=click.Choice(["remove", "keep"]), default=_IMAGING.contrast, show_default=True,
              help="Contrast-enhanced blood: replace it by unenhanced blood, or keep it (as dense soft tissue).")
@click.option("--holdout-patient", "holdout", multiple=True,
              help="A patient (catalogue name or CT file name) whose views all go to the test split. Repeatable.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="New output folder.")
@click.option("--views", default=700, show_default=True, help="Number of views.")
@click.option("--size", default=_IMAGING.size[0], show_default=True, help="Image side in pixels (square detector).")
@click.option("--format", "image_format", type=click.Choice(["png", "tiff"]), default="png", show_default=True)
@click.option("--sid", "sid_mm", default=_IMAGING.sid_mm, show_default=True, help="Source-isocentre distance, mm.")
@click.option("--sdd", "sdd_mm", default=_IMAGING.sdd_mm, show_default=True, help="Source-detector distance, mm.")
@click.option("--detector-mm", type=float, help="Detector side, mm [default: fit the body at the isocentre].")
@click.option("--bin", "bin_", help="CT voxel binning i,j,k [default: about one pixel at the isocentre].")
@click.option("--se-kvp", default=_PHYSICS.se.kvp, show_default=True)
@click.option("--low-kvp", default=_PHYSICS.low.kvp, show_default=True)
@click.option("--high-kvp", default=_PHYSICS.high.kvp, show_default=True)
@click.option("--al-mm", default=_PHYSICS.se.al_mm, show_default=True,
              help="Total aluminium filtration of every protocol.")
@click.option("--se-cu-mm", default=_PHYSICS.se.cu_mm, show_default=True, help="Added copper filtration, SE protocol.")
@click.option("--high-cu-mm", default=_PHYSICS.high.cu_mm, show_default=True,
              help="Added copper filtration, high-kVp protocol.")
@click.option("--se-ugy", default=_PHYSICS.se.kerma_ugy, show_default=True,
              help="SE air kerma at the isocentre (free in air), uGy.")
@click.option("--low-ugy", default=_PHYSICS.low.kerma_ugy, show_default=True,
              help="Low-kVp air kerma at the isocentre, uGy.")
@click.option("--high-ugy", default=_PHYSICS.high.kerma_ugy, show_default=True,
              help="High-kVp air kerma at the isocentre, uGy.")
@click.option("--noise/--no-noise", default=_PHYSICS.noise, show_default=True,
              help="Quantum noise at the stated doses.")
@click.option("--ideal", is_flag=True, help="Also write ideal material images (bone_ideal, soft_ideal).")
@click.option("--lesion-prob", default=0.0, show_default=True, help="Chance that a view holds lung lesions.")
@click.option("--lesion-mm", default="5,30", show_default=True, help="Lesion diameter range, mm.")
@click.option("--max-lesions", default=2, show_default=True, help="Lesions per lesion view, at most.")
@click.option("--tilt-jitter", default=5.0, show_default=True, help="Cranio-caudal tilt uniform in +-deg.")
@click.option("--couch-jitter", default=0.0, show_default=True, help="Couch angle uniform in +-deg.")
@click.option("--split", "split_text", default="0.8,0.1,0.1", show_default=True, help="train,val,test fractions.")
@click.option("--sectors", default=4, show_default=True, help="Gantry sectors, each with train|val|test ranges.")
@click.option("--guard-deg", default=4.0, show_default=True, help="Gap between ranges of different splits, deg.")
@click.option("--lung-labels", help="Label ids of the lungs, e.g. 10-14 [example CT: preset].")
@click.option("--blood-labels", help="Label ids set to blood (40 HU): contrast-filled heart and vessels.")
@click.option("--soft-labels", help="Label ids that never hold bone.")
@click.option("--bone-labels", help="Label ids that may hold bone; elsewhere HU is capped at 100.")
@click.option("--keep-outside-body", is_flag=True, help="Keep the table and everything outside the body.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True, help="Projector threads (0: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@chain_options
def synth(ct_paths: tuple[str, ...], labels_paths: tuple[str, ...], contrast: str, holdout: tuple[str, ...],
          out_dir: str, views: int, size: int, image_format: str,
          sid_mm: float, sdd_mm: float, detector_mm: float | None, bin_: str | None, se_kvp: float, low_kvp: float,
          high_kvp: float, al_mm: float, se_cu_mm: float, high_cu_mm: float, se_ugy: float, low_ugy: float,
          high_ugy: float, noise: bool, ideal: bool, lesion_prob: float, lesion_mm: str, max_lesions: int,
          tilt_jitter: float, couch_jitter: float, split_text: str, sectors: int, guard_deg: float,
          lung_labels: str | None, blood_labels: str | None, soft_labels: str | None, bone_labels: str | None,
          keep_outside_body: bool, seed: int, threads: int, as_json: bool, **chain_kw) -> None:
    """Render a dual-energy DRR dataset (SE | bone | soft, 16-bit) from a CT into a new folder OUTPUT.

    With --chain, each view's SE goes through a randomised imaging chain (kVp, dose, scatter, blur, processing,
    ...; docs/synth.md); with --pool N, a train-only pool of N views at random train angles (chain and anatomy
    variation on unless --no-chain / --no-anatomy)."""
    from dexrt._errors import require_extra

    require_extra("synth", "`dexrt synth`", "nibabel", "SimpleITK", "xraydb", "spekpy", "scipy")
    from dexrt._errors import DexrtError
    from dexrt.synth.physics import PhysicsConfig
    from dexrt.synth.render import ImagingConfig
    from dexrt.synth.spectra import Protocol
    from dexrt.synth.splits import SplitPlan
    from dexrt.synth.writer import DatasetConfig, write_patients

    try:
        chain, anatomy, pool, ap_pa_prob = build_chain(chain_kw)
        views = pool if pool is not None else views
        if labels_paths and len(labels_paths) != len(ct_paths):
            raise click.UsageError(f"give one --labels per --ct ({len(ct_paths)}), or none")
        physics = PhysicsConfig(
            se=Protocol("se", se_kvp, al_mm=al_mm, cu_mm=se_cu_mm, kerma_ugy=se_ugy),
            low=Protocol("low", low_kvp, al_mm=al_mm, cu_mm=0.0, kerma_ugy=low_ugy),
            high=Protocol("high", high_kvp, al_mm=al_mm, cu_mm=high_cu_mm, kerma_ugy=high_ugy),
            noise=noise)
        imaging = ImagingConfig(size=(size, size), sid_mm=sid_mm, sdd_mm=sdd_mm, detector_mm=detector_mm,
                                bin=_ints3(_floats(bin_, 3, "--bin")) if bin_ else None,
                                keep_outside_body=keep_outside_body, contrast=contrast, physics=physics,
                                threads=threads)
        lo_mm, hi_mm = _floats(lesion_mm, 2, "--lesion-mm")
        fractions = cast("tuple[float, float, float]", _floats(split_text, 3, "--split"))
        dataset = DatasetConfig(views=views, image_format=image_format,
                                splits=SplitPlan(fractions=fractions, sectors=sectors, guard_deg=guard_deg),
                                tilt_jitter_deg=tilt_jitter, couch_jitter_deg=couch_jitter, seed=seed,
                                lesion_prob=lesion_prob, max_lesions=max_lesions, lesion_diameter_mm=(lo_mm, hi_mm),
                                ideal=ideal, chain=chain, anatomy=anatomy, pool=pool is not None,
                                ap_pa_prob=ap_pa_prob)
        dataset.validate()
        imaging.validate()
        given = {k: v for k, v in (("lung", lung_labels), ("blood", blood_labels), ("soft", soft_labels),
                                   ("bone", bone_labels)) if v is not None}
        patients = load_patients(ct_paths, labels_paths, given, imaging, holdout)
        show_bar = sys.stderr.isatty() and not as_json
        from tqdm import tqdm

        with tqdm(total=views * len(patients), desc="synth", unit="view", disable=not show_bar,
                  file=sys.stderr) as bar:
            manifest = write_patients(patients, dataset, out_dir, progress=bar.update)
    except DexrtError:
        raise
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc

    summary = {"out": out_dir, "views": len(manifest["views"]), "size": manifest["size"],
               "splits": {s: v["views"] for s, v in manifest["splits"].items()},
               "patients": {k: {"views": p["views"], "holdout": p["holdout"],
                                "contrast": p["geometry"]["volume"]["contrast"].get("detected")}
                            for k, p in manifest["patients"].items()},
               "lesion_views": sum(1 for v in manifest["views"] if v["mask"]),
               "seconds": manifest["generator"]["seconds"]}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        s = summary["splits"]
        click.echo(f"{summary['views']} views ({s['train']} train, {s['val']} val, {s['test']} test) of "
                   f"{size}x{size} in {out_dir} ({summary['seconds']:.1f} s)")
        for name, p in summary["patients"].items():
            click.echo(f"  {name}: {p['views']} views{' (held out: all test)' if p['holdout'] else ''}, contrast "
                       f"enhancement {'detected' if p['contrast'] else 'not detected'}")


def load_patients(ct_paths: tuple[str, ...], labels_paths: tuple[str, ...], given_rules: dict[str, str],
                  imaging, holdout: tuple[str, ...]) -> list:
    """One `Patient` per --ct (catalogue names fetched), all on one detector: the largest body's fit, unless
    --detector-mm is given."""
    from dataclasses import replace
    from functools import partial

    from dexrt.synth.catalogue import CATALOGUE, fetch
    from dexrt.synth.ct import load_ct
    from dexrt.synth.render import fit_detector_mm
    from dexrt.synth.volume import RULE_PRESETS, LabelRules, parse_ids
    from dexrt.synth.writer import Patient, patient_name

    loaded = []
    for i, path in enumerate(ct_paths):
        labels = labels_paths[i] if labels_paths else None
        rules, provenance, name = LabelRules(), {}, None
        if path in CATALOGUE:
            found = fetch(path)
            name, provenance = path, found.provenance()
            if found.labels is not None and labels is None:
                labels = str(found.labels)
                rules = RULE_PRESETS.get(found.entry.label_rules or "", LabelRules())
            path = str(found.ct)
        if given_rules:
            rules = LabelRules(**{**{k: getattr(rules, k) for k in ("lung", "blood", "soft", "bone")},
                                  **{k: parse_ids(v) for k, v in given_rules.items()}})
        ct = load_ct(path, labels)
        loaded.append((name or patient_name(path), ct, rules, provenance))
    names = [n for n, *_ in loaded]
    if len(set(names)) != len(names):
        raise click.UsageError(f"two CTs have the same patient name ({', '.join(names)}); rename a file")
    unknown = sorted(set(holdout) - set(names))
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)} is not a patient of this dataset ({', '.join(names)})",
                                 param_hint="--holdout-patient")
    if imaging.detector_mm is None and len(loaded) > 1:  # every patient at the same scale
        imaging = replace(imaging, detector_mm=max(fit_detector_mm(ct, imaging) for _, ct, _, _ in loaded))
    return [Patient(name, partial(_renderer, ct, replace(imaging, rules=rules)), provenance, holdout=name in holdout)
            for name, ct, rules, provenance in loaded]


def _renderer(ct, imaging):
    """A patient's renderer, built when the writer comes to it (one material volume in memory at a time)."""
    from dexrt.synth.render import Renderer

    return Renderer(ct, imaging)
