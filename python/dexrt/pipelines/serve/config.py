"""`dexrt serve` configuration: a TOML file, command-line overrides, and the checks both go through.

    ae_title = "DEXRT"            # this node's AE title (called AE title the senders must use)
    host = "0.0.0.0"              # IP address to listen on (0.0.0.0: every IPv4 address; "::": every IPv6 one)
    port = 11112
    spool = "/var/spool/dexrt"    # received instances, work in progress, outboxes (one filesystem)
    output = "/srv/dexrt/out"     # optional: also write the derived instances here
    engine = "/opt/dexrt/model.dexrt"  # optional: default is the bundled model
    device = "auto"
    jobs = 8                      # instances being converted at once
    allow_unsigned = false        # optional: run an engine not signed by a trusted key (docs/runtime.md)
    strict = false                # optional: refuse (DIMSE-accept, then set aside) inputs that are not chest PA/AP
    input_spacing_mm = 0.2        # optional: pixel spacing of senders' images that carry none usable
    max_associations = 16
    timeout_s = 30                # ACSE/DIMSE/network timeout, each way
    handshake_s = 5               # a connection must finish TLS and send its association request within this
    drain_s = 30                  # SIGTERM: the longest the node takes to stop
    ledger_entries = 100000       # SOP Instance UIDs remembered after hand-on (resends recognised)
    [[allow]]                     # who may send (at least one entry)
    ae_title = "MODALITY1"
    hosts = ["10.1.2.3", "10.1.4.0/24"]   # optional
    [[forward]]                   # where the bone and soft instances go (none: only --output)
    ae_title = "PACS"
    host = "10.1.9.9"             # an IP address or a host name
    port = 104
    tls = false                   # optional: TLS to this destination (tls_ca, tls_cert, tls_key)
    [tls]                         # optional: TLS on the listening port
    cert = "/etc/dexrt/node.pem"
    key = "/etc/dexrt/node.key"
    ca = "/etc/dexrt/senders-ca.pem"  # optional: then senders must show a certificate signed by it
    [retry]
    initial_s = 2                 # first wait after a destination fails; doubles up to max_s
    max_s = 300

Relative paths in the file are taken relative to the file's folder. A key given on the command line replaces the
file's; a repeatable option (``--allow-ae``, ``--forward``) given at all replaces the file's whole list. Every
number has bounds (:data:`BOUNDS`): a value outside them is a :class:`ConfigError` naming the key, never a
traceback at start or a node that takes the machine down.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dexrt._errors import ConfigError
from dexrt.runtime.pixel_spacing import check_option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_PORT = 11112
# DICOM PS3.5 AE title: 1-16 characters of the default repertoire, no backslash or control characters; leading
# and trailing spaces are not significant.
_AE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
# A host name (RFC 1123 labels); a name whose last label is all digits is a mistyped IP address, not a name.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
MAX_CONFIG_BYTES = 1 << 20  # a node's settings are a few hundred bytes; a bigger file is a mistake
# (lowest, highest) of each number. Beyond them a value is a typo or an attack on the file: `timeout_s = inf`
# ended in an OverflowError inside the network library, `jobs = 1e9` would start a billion threads.
BOUNDS: dict[str, tuple[float, float]] = {
    "port": (0, 65535),  # 0: the system picks a free port
    "jobs": (1, 256),
    "max_associations": (1, 1024),
    "timeout_s": (0.1, 3600),
    "handshake_s": (0.1, 120),
    "drain_s": (0, 3600),
    "retry_initial_s": (0.01, 3600),
    "retry_max_s": (0.01, 86400),
    "ledger_entries": (1000, 10_000_000),
}
_INTEGERS = ("port", "jobs", "max_associations", "ledger_entries")


@dataclass(frozen=True)
class Allowed:
    """A calling AE title that may open associations, from any address or only from ``hosts``."""

    ae_title: str
    hosts: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def admits(self, ae_title: str, address: str) -> bool:
        if ae_title.strip() != self.ae_title:
            return False
        if not self.hosts:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.hosts)


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP the derived instances are sent to."""

    ae_title: str
    host: str
    port: int
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def name(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def key(self) -> str:
        """A file-name-safe, unique name for this destination's outbox folder."""
        return re.sub(r"[^A-Za-z0-9.-]", "_", f"{self.ae_title}@{self.host}_{self.port}")


@dataclass(frozen=True)
class ServeConfig:
    spool: Path
    allow: tuple[Allowed, ...]
    ae_title: str = "DEXRT"
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    forward: tuple[Destination, ...] = ()
    output: Path | None = None
    engine: Path | None = None
    device: str = "auto"
    jobs: int = 8
    max_associations: int = 16
    timeout_s: float = 30.0
    handshake_s: float = 5.0
    drain_s: float = 30.0
    ledger_entries: int = 100_000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0
    allow_unsigned: bool = False
    strict: bool = False
    input_spacing_mm: float | None = None
    source: Path | None = field(default=None, compare=False)  # the TOML file, if any

    @property
    def require_signed(self) -> bool:
        """A node runs only an engine signed by a trusted key unless told otherwise (docs/runtime.md)."""
        return not self.allow_unsigned


def ae_title(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _AE.fullmatch(value) or not value.strip():
        raise ConfigError(f"{where}: {value!r} is not an AE title (1-16 printable characters, no backslash)")
    return value.strip()


def parse_allow(text: str) -> Allowed:
    """``AE`` or ``AE@HOST`` (an address or a network such as 10.1.0.0/16)."""
    title, _, host = text.partition("@")
    return Allowed(ae_title(title, f"--allow-ae {text}"), (_network(host, f"--allow-ae {text}"),) if host else ())


def parse_forward(text: str) -> Destination:
    """``AE@HOST:PORT`` (an IPv6 host in brackets: ``AE@[::1]:104``)."""
    title, at, rest = text.rpartition("@")
    host, colon, port = rest.rpartition(":")
    if not at or not colon or not host:
        raise ConfigError(f"--forward {text}: expected AE@HOST:PORT")
    return Destination(ae_title(title, f"--forward {text}"), _host(host.strip("[]"), f"--forward {text}"),
                       _port(port, f"--forward {text}"))


def _network(text: Any, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        if not isinstance(text, str):
            raise ValueError(text)
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an IP address or network (host names are not accepted: "
                          "an address check on a name that resolves differently later would be no check)") from None


def _port(value: Any, where: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if isinstance(value, bool) or not 0 < port < 65536:
        raise ConfigError(f"{where}: {value!r} is not a TCP port (1-65535)")
    return port


def _host(value: Any, where: str) -> str:
    """A destination's host: an IP address or a host name (RFC 1123); `999.1.1.1` is neither."""
    if not value:
        raise ConfigError(f"{where}: 'host' is required")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.rstrip(".").split(".") if isinstance(value, str) else []
    if (not labels or len(value) > 253 or not all(_LABEL.fullmatch(label) for label in labels)
            or labels[-1].isdigit()):
        raise ConfigError(f"{where}: {value!r} is neither an IP address nor a host name")
    return str(value)


def _listen_address(value: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"{where}: host must be an IP address to listen on (0.0.0.0: every IPv4 address, "
                          f"'::': every IPv6 one), got {value!r}") from None


class _Table:
    """One TOML table read key by key with typed errors naming the file and the key; unknown keys are refused
    (a misspelt `alow` must not silently leave a node open or closed)."""

    def __init__(self, data: dict[str, Any], where: str, base: Path) -> None:
        self.data, self.where, self.base = dict(data), where, base

    def take(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.data.pop(key, default)
        if value is not default and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"{self.where}: '{key}' must be {_kind(kind)}, got {value!r}")
        return value

    def path(self, key: str) -> Path | None:
        value = self.take(key, str)
        return None if value is None else self.base / Path(value).expanduser()

    def done(self) -> None:
        if self.data:
            raise ConfigError(f"{self.where}: unknown key(s) {', '.join(sorted(self.data))}")


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "a string", int: "an integer", float: "a number", bool: "true or false",
                        list: "a list", dict: "a table"}.get(k, k.__name__) for k in kinds)


def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror or exc})") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a node's configuration")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text: {exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(f"{path}: not valid TOML for a node (arrays or tables nested too deeply)") from None


def read_toml(path: Path) -> dict[str, Any]:
    """The settings in a TOML file, as keyword arguments of :class:`ServeConfig` (paths resolved)."""
    data = _load(path)
    base = path.parent
    top = _Table(data, str(path), base)
    out: dict[str, Any] = {"source": path}
    number = (int, float)
    for key, kind in (("ae_title", str), ("host", str), ("device", str), ("port", int), ("jobs", int),
                      ("max_associations", int), ("timeout_s", number), ("handshake_s", number),
                      ("drain_s", number), ("ledger_entries", int), ("allow_unsigned", bool), ("strict", bool),
                      ("input_spacing_mm", number)):
        value = top.take(key, kind)
        if value is not None:
            out[key] = value
    if top.take("require_signed", bool) is False:
        raise ConfigError(f"{path}: require_signed = false: a node now requires a signed engine by default; to run "
                          "one that is not signed by a trusted key, say so with allow_unsigned = true")
    for key in ("spool", "output", "engine"):
        if (value := top.path(key)) is not None:
            out[key] = value
    allow = []
    for i, entry in enumerate(top.take("allow", list, [])):
        t = _Table(entry if isinstance(entry, dict) else {}, f"{path}: allow[{i}]", base)
        title = ae_title(t.take("ae_title", str), t.where)
        hosts = tuple(_network(h, t.where) for h in t.take("hosts", list, []))
        t.done()
        allow.append(Allowed(title, hosts))
    if allow:
        out["allow"] = tuple(allow)
    forward = []
    for i, entry in enumerate(top.take("forward", list, [])):
        t = _Table(entry if isinstance(entry, dict) else {}, f"{path}: forward[{i}]", base)
        forward.append(Destination(ae_title(t.take("ae_title", str), t.where), _host(t.take("host", str), t.where),
                                   _port(t.take("port", int), t.where), bool(t.take("tls", bool, False)),
                                   t.path("tls_ca"), t.path("tls_cert"), t.path("tls_key")))
        t.done()
    if forward:
        out["forward"] = tuple(forward)
    tls = _Table(top.take("tls", dict, {}), f"{path}: [tls]", base)
    for key in ("cert", "key", "ca"):
        if (value := tls.path(key)) is not None:
            out[f"tls_{key}"] = value
    tls.done()
    retry = _Table(top.take("retry", dict, {}), f"{path}: [retry]", base)
    for key in ("initial_s", "max_s"):
        if (value := retry.take(key, number)) is not None:
            out[f"retry_{key}"] = float(value)
    retry.done()
    top.done()
    return out


def build_config(file: Path | None = None, **overrides: Any) -> ServeConfig:
    """The configuration from `file` (if any) with `overrides` (None = not given) applied, checked."""
    settings = read_toml(file) if file is not None else {}
    settings.update({k: v for k, v in overrides.items() if v is not None and v != ()})
    where = str(file) if file is not None else "command line"
    if "spool" not in settings:
        raise ConfigError(f"{where}: no spool folder (--spool DIR or `spool = ...`)")
    if not settings.get("allow"):
        raise ConfigError(f"{where}: no calling AE title is allowed to send (--allow-ae AE or [[allow]]); "
                          "a node that accepts anyone is not offered")
    try:
        config = ServeConfig(**settings)
    except TypeError as exc:  # an unknown override name: a programming error, not a user's
        raise ValueError(str(exc)) from None
    return check(config, where)


def _bounded(config: ServeConfig, where: str) -> None:
    for key, (low, high) in BOUNDS.items():
        value = getattr(config, key)
        integral = key in _INTEGERS
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not low <= value <= high or (integral and not isinstance(value, int))):
            kind = "an integer" if integral else "a number"
            raise ConfigError(f"{where}: {key} must be {kind} from {low:g} to {high:g}, got {value!r}")


def check(config: ServeConfig, where: str) -> ServeConfig:
    """Range and consistency checks shared by the file and the command line."""
    config = replace(config, ae_title=ae_title(config.ae_title, f"{where}: ae_title"),
                     host=_listen_address(config.host, where),
                     forward=tuple(replace(d, host=_host(d.host, f"{where}: forward {d.name}"))
                                   for d in config.forward))
    _bounded(config, where)
    if config.device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"{where}: device must be auto, cpu or gpu, got {config.device!r}")
    if config.retry_initial_s > config.retry_max_s:
        raise ConfigError(f"{where}: retry initial_s ({config.retry_initial_s}) is more than max_s "
                          f"({config.retry_max_s})")
    try:
        check_option("input_spacing_mm", config.input_spacing_mm)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError(f"{where}: TLS needs both a certificate and a key (tls cert and key)")
    if config.tls_ca is not None and config.tls_cert is None:
        raise ConfigError(f"{where}: a TLS CA for senders needs the node's own certificate and key")
    for path in (config.engine, config.tls_cert, config.tls_key, config.tls_ca,
                 *(p for d in config.forward for p in (d.tls_ca, d.tls_cert, d.tls_key))):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{where}: cannot read {path}")
    keys = [d.key for d in config.forward]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{where}: a destination is listed twice")
    if not config.forward and config.output is None:
        raise ConfigError(f"{where}: the derived instances would go nowhere: give --forward AE@HOST:PORT "
                          "and/or --output DIR")
    return config
