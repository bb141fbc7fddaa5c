"""What the node speaks: the storage SOP classes and transfer syntaxes it accepts and proposes, and TLS contexts."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from dexrt._errors import ConfigError
from dexrt.io.deflated import DEFLATED

# Projection radiographs dexrt converts (dexrt.io.dicom.MODALITIES), by storage SOP class. The enhanced XA/XRF
# classes are left out: their pixel spacing and frame geometry live in per-frame functional groups that the
# derived-instance writer does not rewrite.
STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image Storage",
}
VERIFICATION = "1.2.840.10008.1.1"

_UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian first: the preferred one when a sender offers several
    "1.2.840.10008.1.2",  # Implicit VR Little Endian (the default every node must accept)
    DEFLATED,  # Deflated Explicit VR Little Endian: inflated within bounds, never a bomb (dexrt.io.deflated)
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
)
_COMPRESSED = (
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57",  # JPEG Lossless (SV1, and any predictor)
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",  # JPEG Baseline, Extended
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS lossless, near-lossless
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000 lossless, lossy
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
)
# What derived instances can be written in (dexrt.io.dicom mirrors these lossless syntaxes when it can encode them).
OUTPUT_COMPRESSED = ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90")


def accepted_syntaxes() -> list[str]:
    """The transfer syntaxes whose pixel data this installation decodes: the uncompressed ones, and each
    compressed one whose pydicom decoder has its codec installed (the `dicom` extra)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    found = list(_UNCOMPRESSED)
    for syntax in _COMPRESSED:
        try:
            if get_decoder(UID(syntax)).is_available:
                found.append(syntax)
        except NotImplementedError:
            continue
    return found


def add_scp_contexts(ae: Any) -> None:
    for sop_class in STORAGE_CLASSES:
        ae.add_supported_context(sop_class, accepted_syntaxes())
    ae.add_supported_context(VERIFICATION, _UNCOMPRESSED[:2])


def add_scu_contexts(ae: Any) -> None:
    """Contexts for sending derived instances: per class, one uncompressed context and one per compressed
    output syntax, each alone, so that a destination can accept the compressed form or fall back."""
    for sop_class in STORAGE_CLASSES:
        ae.add_requested_context(sop_class, list(_UNCOMPRESSED[:2]))
        for syntax in OUTPUT_COMPRESSED:
            ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context(VERIFICATION, list(_UNCOMPRESSED[:2]))


def server_tls(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext | None:
    """TLS for the listening port (None without a certificate); with `ca`, senders must present a certificate
    it signed (mutual TLS)."""
    if cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key, ca)
    if ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_tls(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """TLS towards a destination: its certificate checked against `ca` (else the system's CAs), optionally our
    own certificate for a destination that requires one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key, ca)
    return context


def _load(context: ssl.SSLContext, cert: Path | None, key: Path | None, ca: Path | None) -> None:
    try:
        if cert is not None:
            context.load_cert_chain(cert, key)
        if ca is not None:
            context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS: cannot load {cert if cert else ''} {key if key else ''} "
                          f"{ca if ca else ''}".strip() + f" ({exc})") from exc
