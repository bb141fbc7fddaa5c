"""Reading dexrt's own versioned JSON documents (dataset manifests, checkpoint configs) with typed errors."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from dexrt._errors import DexrtError


def read_versioned(path: Path, *, fmt: str, version: int | Collection[int], kind: str,
                   error: type[DexrtError]) -> dict[str, Any]:
    """The JSON object at ``path`` whose ``format`` is ``fmt`` and ``format_version`` is ``version`` (or one of
    them); otherwise ``error`` naming the file and what is wrong. A missing file raises FileNotFoundError for the
    caller to word."""
    versions = (version,) if isinstance(version, int) else tuple(version)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{path}: not a dexrt {kind} (format is not {fmt!r})")
    found = doc.get("format_version")
    if isinstance(found, bool) or found not in versions:
        wanted = " or ".join(map(str, versions))
        raise error(f"{path}: {kind} format version {found!r} is not {wanted}, what this dexrt reads")
    return doc
