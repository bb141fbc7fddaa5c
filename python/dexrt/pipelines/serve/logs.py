"""The node's log: one line per event (received, converted, forwarded, rejected, ...), as text or JSON lines.

Every event goes through :func:`event`, so the text and JSON forms carry the same fields; a log shipper can
rely on ``event`` and the field names in the JSON form.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from typing import Any

log = logging.getLogger("dexrt.pipelines.serve")


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one node event with its fields (None values are left out)."""
    fields = {k: v for k, v in fields.items() if v is not None}
    log.log(level, "%s %s", name, " ".join(f"{k}={_text(v)}" for k, v in fields.items()),
            extra={"dexrt_event": name, "dexrt_fields": fields})


def _text(value: Any) -> str:
    """A field value for the text form: quoted (JSON) when it has spaces or anything not printable, so that a
    value a sender chose (an AE title with a newline) can never start a line of its own."""
    text = str(value)
    return json.dumps(text) if (" " in text or not text or not text.isprintable()) else text


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, event, the event's fields; records that are
    not node events (library warnings) carry their message instead."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        name = getattr(record, "dexrt_event", None)
        if name is not None:
            out["event"] = name
            out.update(getattr(record, "dexrt_fields", {}))
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(as_json: bool, verbose: int = 0) -> None:
    """Route every log record to stderr, as JSON lines or text; node events at INFO, libraries at WARNING
    (INFO with -v, DEBUG with -vv)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else
                         logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING - 10 * verbose, logging.DEBUG))
    log.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
