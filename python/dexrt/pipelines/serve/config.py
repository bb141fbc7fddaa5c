"""`dexrt serve` configuration: a TOML file, command-line overrides, and the checks both go through.

    ae_title = "DEXRT"            # this node's AE title (called AE title the senders must use)
    host = "0.0.0.0"              # address to listen on
    port = 11112
    spool = "/var/spool/dexrt"    # received instances, work in progress, outboxes (one filesystem)
    output = "/srv/dexrt/out"     # optional: also write the derived instances here
    engine = "/opt/dexrt/model.dexrt"  # optional: default is the bundled model
    device = "auto"
    jobs = 8                      # instances being converted at once
    require_signed = false        # optional: refuse an engine not signed by a trusted key (docs/runtime.md)
    strict = false                # optional: refuse (DIMSE-accept, then set aside) inputs that are not chest PA/AP
    input_spacing_mm = 0.2        # optional: pixel spacing of senders' images that carry none usable
    max_associations = 16
    timeout_s = 30                # ACSE/DIMSE/network timeout, each way
    [[allow]]                     # who may send (at least one entry)
    ae_title = "MODALITY1"
    hosts = ["10.1.2.3", "10.1.4.0/24"]   # optional
    [[forward]]                   # where the bone and soft instances go (none: only --output)
    ae_title = "PACS"
    host = "10.1.9.9"
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
file's; a repeatable option (``--allow-ae``, ``--forward``) given at all replaces the file's whole list.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dexrt._errors import ConfigError
from dexrt.inputs.spacing import check_option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_PORT = 11112
# DICOM PS3.5 AE title: 1-16 characters of the default repertoire, no backslash or control characters; leading
# and trailing spaces are not significant.
_AE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


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
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0
    require_signed: bool = False
    strict: bool = False
    input_spacing_mm: float | None = None
    source: Path | None = field(default=None, compare=False)  # the TOML file, if any


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
    return Destination(ae_title(title, f"--forward {text}"), host.strip("[]"), _port(port, f"--forward {text}"))


def _network(text: str, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
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


def read_toml(path: Path) -> dict[str, Any]:
    """The settings in a TOML file, as keyword arguments of :class:`ServeConfig` (paths resolved)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    base = path.parent
    top = _Table(data, str(path), base)
    out: dict[str, Any] = {"source": path}
    for key, kind in (("ae_title", str), ("host", str), ("device", str), ("port", int), ("jobs", int),
                      ("max_associations", int), ("timeout_s", (int, float)), ("require_signed", bool),
                      ("strict", bool), ("input_spacing_mm", (int, float))):
        value = top.take(key, kind)
        if value is not None:
            out[key] = value
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
        if (value := retry.take(key, (int, float))) is not None:
            out[f"retry_{key}"] = float(value)
    retry.done()
    top.done()
    return out


def _host(value: str | None, where: str) -> str:
    if not value:
        raise ConfigError(f"{where}: 'host' is required")
    return value


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


def check(config: ServeConfig, where: str) -> ServeConfig:
    """Range and consistency checks shared by the file and the command line."""
    config = replace(config, ae_title=ae_title(config.ae_title, f"{where}: ae_title"))
    if isinstance(config.port, bool) or not 0 <= config.port <= 65535:  # 0: the system picks a free port
        raise ConfigError(f"{where}: port must be 0-65535, got {config.port!r}")
    if config.device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"{where}: device must be auto, cpu or gpu, got {config.device!r}")
    for key in ("jobs", "max_associations"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{where}: {key} must be >= 1, got {getattr(config, key)}")
    if not config.timeout_s > 0 or not 0 < config.retry_initial_s <= config.retry_max_s:
        raise ConfigError(f"{where}: timeout_s must be > 0 and 0 < retry initial_s <= max_s")
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
