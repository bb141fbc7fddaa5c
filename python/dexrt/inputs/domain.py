"""Is this input a frontal chest radiograph, the only thing the model was trained on? Reasons when it is not.

Two kinds of evidence, both documented in docs/infer.md ("Out-of-domain inputs"):

- **The DICOM header.** A ``BodyPartExamined`` or ``AnatomicRegionSequence`` meaning without a chest word (CHEST,
  THORAX, LUNG, ...) is flagged; so is a study, series, protocol or procedure description naming another body part
  (HAND, SKULL, ABDOMEN, ...) when no description mentions the chest; ``ViewPosition`` other than PA or AP (a
  lateral, oblique or decubitus view) is flagged; so is a projection modality that is not radiography of the chest
  (MG mammography, IO and PX dental, RF and XA fluoroscopy). Empty or absent attributes say nothing.
- **The pixels**, for every format (`dexrt.inputs.chest`): no body at all (a blank or uniform image), or a lung
  contrast below `MIN_LUNG_CONTRAST` (no dark lung fields either side of a bright mediastinum: a non-chest
  image, a lateral view, or inverted polarity, which gives a clearly negative contrast).

A file with reasons is converted with a warning (log, ``--json``, the derived files' descriptions), or refused
with ``strict`` (`DomainError`, an InputError naming the file and the reasons).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dexrt._errors import DomainError  # noqa: F401 - raised by the converter, importable from here
from dexrt.inputs.chest import Anatomy

# Measured on 144 DRRs of the example CT (docs/experiments/studies/spacing_estimate.py): frontal views (gantry within 15
# deg of AP or PA) 0.31 to 0.58, obliques -0.05 to 0.33, laterals (within 15 deg of 90 or 270) -0.05 to 0.16.
MIN_LUNG_CONTRAST = 0.2
INVERTED_LUNG_CONTRAST = -0.15  # below this the mediastinum is clearly darker than the lungs
FRONTAL_VIEWS = ("PA", "AP")
CHEST_MODALITIES = ("CR", "DX")  # projection radiography; OT (other) and absent say nothing
OTHER_MODALITIES = {"MG": "mammography", "IO": "intra-oral dental", "PX": "panoramic dental", "RF": "fluoroscopy",
                    "XA": "angiography"}
CHEST_WORDS = ("CHEST", "THORAX", "THORACIC", "THX", "TORAX", "TORACE", "THORAKS", "LUNG", "LUNGS", "CXR",
               "POUMON", "POUMONS", "PULMONARY", "BRUST", "BRUSTKORB", "RIBS")
OTHER_WORDS = ("HAND", "HANDS", "WRIST", "FINGER", "FINGERS", "THUMB", "FOOT", "FEET", "ANKLE", "TOE", "TOES",
               "KNEE", "KNEES", "HIP", "HIPS", "PELVIS", "FEMUR", "TIBIA", "FIBULA", "HUMERUS", "ELBOW", "FOREARM",
               "SHOULDER", "CLAVICLE", "SCAPULA", "SKULL", "HEAD", "SINUS", "SINUSES", "FACE", "MANDIBLE", "DENTAL",
               "ABDOMEN", "ABD", "KUB", "CSPINE", "LSPINE", "CERVICAL", "LUMBAR", "SACRUM", "COCCYX", "MAMMO",
               "MAMMOGRAPHY", "BREAST", "EXTREMITY", "LEG", "ARM", "HEEL", "CALCANEUS")
_DESCRIPTIONS = ("StudyDescription", "SeriesDescription", "ProtocolName",
                 "RequestedProcedureDescription", "PerformedProcedureStepDescription")


@dataclass(frozen=True)
class DomainReport:
    reasons: tuple[str, ...] = ()
    measures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, Any]:
        return {"in_domain": self.ok, "reasons": list(self.reasons), "measures": dict(self.measures)}

    def summary(self) -> str:
        return "not a frontal chest radiograph? " + "; ".join(self.reasons)


def check(dataset: Any | None, anatomy: Anatomy | None) -> DomainReport:
    """Reasons to think an input is no frontal chest radiograph: from its DICOM header (None for PNG/TIFF) and
    from its measured anatomy (None to skip the pixel checks)."""
    reasons = header_reasons(dataset) if dataset is not None else []
    measures: dict[str, Any] = {}
    if anatomy is not None:
        measures = anatomy.as_dict()
        reasons += content_reasons(anatomy)
    return DomainReport(tuple(reasons), measures)


def header_reasons(ds: Any) -> list[str]:
    reasons = []
    modality = _text(ds, "Modality").upper()
    if modality in OTHER_MODALITIES:
        reasons.append(f"Modality {modality} ({OTHER_MODALITIES[modality]}) is not chest radiography")
    view = _text(ds, "ViewPosition").upper()
    if view and view not in FRONTAL_VIEWS:
        reasons.append(f"ViewPosition {view} is not a frontal (PA or AP) view")
    # The coded body part speaks for itself; free-text descriptions only when none of them mentions the chest
    # ("PA chest" beside "hand-held portable" is a chest).
    coded = {"BodyPartExamined": _text(ds, "BodyPartExamined"),
             "AnatomicRegionSequence": _code_meaning(ds, "AnatomicRegionSequence")}
    for keyword, value in coded.items():
        if value and not set(_words(value)) & set(CHEST_WORDS):
            reasons.append(f"{keyword} {value!r} is not the chest")
    texts = {k: _text(ds, k) for k in _DESCRIPTIONS}
    words = {k: set(_words(v)) for k, v in texts.items() if v}
    if not any(w & set(CHEST_WORDS) for w in words.values()):
        for keyword, found in words.items():
            other = sorted(found & set(OTHER_WORDS))
            if other:
                reasons.append(f"{keyword} {texts[keyword]!r} names {', '.join(other)}, not the chest")
    return reasons


def content_reasons(anatomy: Anatomy) -> list[str]:
    if anatomy.body_width_px is None or anatomy.lung_contrast is None:
        return ["no anatomy found in the image (blank, uniform or all background)"]
    if anatomy.lung_contrast < INVERTED_LUNG_CONTRAST:
        return [f"the middle of the body is darker than the lung fields (lung contrast {anatomy.lung_contrast:.2f}): "
                "inverted polarity (bright should mean attenuating) or not a chest"]
    if anatomy.lung_contrast < MIN_LUNG_CONTRAST:
        return [f"no lung fields either side of a brighter mediastinum (lung contrast {anatomy.lung_contrast:.2f} < "
                f"{MIN_LUNG_CONTRAST:g}): not a frontal chest radiograph"]
    return []


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Z]+", text.upper())


def _text(ds: Any, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a damaged optional attribute says nothing about the domain
        return ""
    if value is None:
        return ""
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        return " ".join(str(v) for v in value).strip()
    return str(value).strip()


def _code_meaning(ds: Any, keyword: str) -> str:
    try:
        items = ds.get(keyword) or []
        return " ".join(str(item.get("CodeMeaning", "")) for item in items).strip()
    except Exception:  # noqa: BLE001 - as in _text
        return ""
