"""`dexrt serve`: run a DICOM node that converts the radiographs it receives and sends the results on."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import click


def _parsed(values: tuple[str, ...], parse: Any) -> tuple[Any, ...] | None:
    return tuple(parse(v) for v in values) if values else None


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.toml",
              help="Settings file (TOML; keys in docs/serve.md). Options given here override it.")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default 11112; 0: any free port).")
@click.option("--host", help="Address to listen on (default 0.0.0.0).")
@click.option("--ae-title", help="This node's AE title (default DEXRT); senders must call it by this name.")
@click.option("--allow-ae", multiple=True, metavar="AE[@ADDRESS]",
              help="A calling AE title allowed to send, optionally only from ADDRESS (an IP or a network such as "
                   "10.1.0.0/16). Repeatable; replaces the file's [[allow]] list.")
@click.option("--forward", multiple=True, metavar="AE@HOST:PORT",
              help="Send the bone and soft instances to this C-STORE SCP. Repeatable; replaces the file's list.")
@click.option("--spool", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for received instances and work in progress (created if needed).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Also write the derived instances into this folder.")
@click.option("--engine", type=click.Path(dir_okay=False, path_type=Path),
              help="Engine bundle (.dexrt) (default: dexrt's bundled model).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), help="Engine device (default auto).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), help="Instances converted at once (default 8).")
@click.option("--allow-unsigned", is_flag=True, default=None,
              help="Run an engine that is not signed by a trusted key (by default the node refuses it; "
                   "docs/runtime.md).")
@click.option("--require-signed", is_flag=True, hidden=True,
              help="Refuse an engine that is not signed by a trusted key: the default (kept for existing scripts).")
@click.option("--strict", is_flag=True, default=None,
              help="Set aside inputs that are not frontal chest radiographs, or not the patient of a patient engine "
                   "(`dexrt fit`), instead of converting them with a warning.")
@click.option("--input-spacing", "input_spacing_mm", type=float, metavar="MM",
              help="Pixel spacing of received images that carry none usable (else estimated, see docs/infer.md).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="TLS private key (PEM).")
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path),
              help="Require senders to present a TLS certificate signed by this CA (PEM).")
@click.option("--json", "as_json", is_flag=True, help="Logs as JSON lines on stderr (--check: a JSON report).")
@click.option("--check", is_flag=True, help="Check the configuration and C-ECHO each destination, then exit.")
@click.option("--retry-failed", is_flag=True,
              help="Move the instances set aside in the spool's failed/ back to received/, then exit: the next "
                   "start converts them again. Run it while the node is stopped (it takes the spool's lock).")
@click.pass_context
def serve(ctx: click.Context, config_file: Path | None, port: int | None, host: str | None, ae_title: str | None,
          allow_ae: tuple[str, ...], forward: tuple[str, ...], spool: Path | None, output: Path | None,
          engine: Path | None, device: str | None, jobs: int | None, allow_unsigned: bool | None,
          require_signed: bool, strict: bool | None,
          input_spacing_mm: float | None, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None,
          as_json: bool, check: bool, retry_failed: bool) -> None:
    """Receive radiographs (C-STORE), convert them, send the bone and soft images on.

    Accepts CR, DX and X-ray angiographic/RF instances from the allowed calling AE titles, acknowledges each
    once it is safely in the spool, converts it with the engine (which must be signed by a trusted key unless
    --allow-unsigned), and sends the two derived instances to every --forward destination (retrying one that
    is down) and/or writes them into --output. SIGTERM (or Ctrl-C)
    stops it cleanly; work not finished stays in the spool and resumes at the next start. See docs/serve.md.
    """
    from dexrt._errors import require_extra

    require_extra("serve", "`dexrt serve`", "pynetdicom")
    if allow_unsigned and require_signed:
        raise click.UsageError("--allow-unsigned and --require-signed contradict each other; give one")
    from dexrt.pipelines.serve.config import build_config, parse_allow, parse_forward
    from dexrt.pipelines.serve.logs import configure

    if retry_failed:
        _retry_failed(config_file, spool, as_json)
        return
    config = build_config(config_file, port=port, host=host, ae_title=ae_title, spool=spool, output=output,
                          engine=engine, device=device, jobs=jobs, allow_unsigned=allow_unsigned, strict=strict,
                          input_spacing_mm=input_spacing_mm, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                          allow=_parsed(allow_ae, parse_allow), forward=_parsed(forward, parse_forward))
    verbose = (ctx.parent.params.get("verbose") or 0) if ctx.parent else 0
    configure(as_json, verbose)
    if check:
        _check(config, as_json)
    else:
        _run(config)


def _retry_failed(config_file: Path | None, spool: Path | None, as_json: bool) -> None:
    from dexrt._errors import ConfigError
    from dexrt.pipelines.serve.config import BOUNDS, read_toml
    from dexrt.pipelines.serve.spool import Spool

    settings = read_toml(config_file) if config_file is not None else {}
    folder = spool or settings.get("spool")
    if folder is None:
        raise ConfigError("--retry-failed: which spool? give --spool DIR or --config FILE.toml")
    if not (Path(folder) / "failed").is_dir():
        raise ConfigError(f"{folder}: not a node's spool (no failed/ folder)")
    # The node's own ledger bound, or the largest: opening the spool must not shorten its ledger.
    keep = int(settings.get("ledger_entries", BOUNDS["ledger_entries"][1]))
    store = Spool(folder, ledger_entries=keep)  # takes the lock: refused while a node runs on it
    try:
        moved = store.retry_failed()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"spool": str(folder), "moved_to_received": moved}, indent=2))
    else:
        click.echo(f"{len(moved)} instance(s) moved from {folder}/failed to received/; the next start converts them")


def _check(config: Any, as_json: bool) -> None:
    """Everything a start would need, without taking the spool or the port: exit code 1 if anything fails."""
    from dexrt._errors import DexrtError
    from dexrt.runtime.bundle import read_bundle
    from dexrt.runtime.signing import check_origin
    from dexrt.models import resolve_engine
    from dexrt.pipelines.serve.contexts import client_tls, server_tls
    from dexrt.pipelines.serve.forward import echo

    results: list[dict[str, Any]] = []

    def item(what: str, ok: bool, detail: str) -> None:
        results.append({"check": what, "ok": ok, "detail": detail})

    try:
        path = resolve_engine(config.engine)
        bundle = read_bundle(path)
        manifest = bundle.manifest
        if config.require_signed:  # the same policy as loading it
            check_origin(path, bundle.manifest_bytes, bundle.signature, trusted_keys=None, require_signed=True)
        item("engine", True, f"{path} ({manifest['backend']}, {manifest['precision']})")
    except DexrtError as exc:
        item("engine", False, str(exc))
    try:
        config.spool.mkdir(parents=True, exist_ok=True)
        writable = os.access(config.spool, os.W_OK | os.X_OK)
        item("spool", writable, f"{config.spool}" + ("" if writable else " is not writable"))
    except OSError as exc:
        item("spool", False, f"{config.spool}: {exc.strerror or exc}")
    for what, load in (("tls", lambda: server_tls(config.tls_cert, config.tls_key, config.tls_ca)),
                       *((f"tls {d.name}", lambda d=d: client_tls(d.tls_ca, d.tls_cert, d.tls_key))
                         for d in config.forward if d.tls)):
        if what == "tls" and config.tls_cert is None:
            continue
        try:
            load()
            item(what, True, "certificates load")
        except DexrtError as exc:
            item(what, False, str(exc))
    for dest in config.forward:
        ok, detail = echo(config, dest)
        item(f"destination {dest.name}", ok, detail)
    ok = all(r["ok"] for r in results)
    if as_json:
        click.echo(json.dumps({"ok": ok, "ae_title": config.ae_title, "port": config.port,
                               "allow": [a.ae_title for a in config.allow], "checks": results}, indent=2))
    else:
        for r in results:
            click.echo(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']}: {r['detail']}")
    if not ok:
        raise SystemExit(1)


def _run(config: Any) -> None:
    from dexrt._errors import ConfigError
    from dexrt.pipelines.convert import FOLDER_ENGINE_OPTIONS
    from dexrt.runtime.engine import Engine
    from dexrt.models import resolve_engine
    from dexrt.pipelines.serve.logs import event
    from dexrt.pipelines.serve.node import Node

    stop = threading.Event()
    received: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    busy = 0
    engine = Engine(resolve_engine(config.engine), config.device, require_signed=config.require_signed,
                    **FOLDER_ENGINE_OPTIONS)
    try:
        node = Node(config, engine)
        try:
            node.start()
        except BaseException as exc:
            node.stop(0)
            if isinstance(exc, OSError):
                raise ConfigError(f"cannot listen on {config.host}:{config.port} ({exc.strerror or exc})") from exc
            raise
        while not stop.wait(1.0):
            pass
        event("stopping", signal=received[0] if received else None, drain_s=config.drain_s)
        busy = node.stop()  # within drain_s, whatever the network does
    finally:
        engine.close(cancel=bool(busy))  # conversions still running at the deadline are the spool's to resume
        for s, h in previous.items():
            signal.signal(s, h)
