"""`dexrt serve` as operated: configuration files and their bounds, the command line, the node as a process
(crash, restart, SIGTERM), the deployment files in docs/deploy/, signed engines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pynetdicom")

import dexrt  # noqa: E402
from dexrt._errors import ConfigError  # noqa: E402
from dexrt.pipelines.serve import Node, build_config  # noqa: E402
from dexrt.pipelines.serve.config import parse_allow, parse_forward  # noqa: E402
from serve_helpers import (  # noqa: E402
    DX, LOOPBACK, Destination, client, free_port, radiograph, send, wait_until,
)
from serve_fixtures import (  # noqa: E402,F401  (fixtures, by name)
    TIMEOUT, _restore_logging, assert_derived, closed_by_node, destination, echo_within_15_s, engine,
    idle_connections, make_node, make_pki, self_signed, sender_tls,
)


# -- configuration and the command line -----------------------------------------------------------------------
def test_config_file_with_overrides(tmp_path: Path) -> None:
    (tmp_path / "serve.toml").write_text(
        'ae_title = "BONES"\nport = 4242\nspool = "spool"\n[[allow]]\nae_title = "CR1"\nhosts = ["10.1.0.0/16"]\n'
        '[[forward]]\nae_title = "PACS"\nhost = "10.1.9.9"\nport = 104\n[retry]\nmax_s = 60\n')
    config = build_config(tmp_path / "serve.toml", port=11112)
    assert (config.ae_title, config.port, config.spool) == ("BONES", 11112, tmp_path / "spool")
    assert config.allow[0].admits("CR1", "10.1.2.3") and not config.allow[0].admits("CR1", "10.2.0.1")
    assert config.forward[0].name == "PACS@10.1.9.9:104" and config.retry_max_s == 60
    replaced = build_config(tmp_path / "serve.toml", forward=(parse_forward("OTHER@[::1]:11113"),))
    assert [d.name for d in replaced.forward] == ["OTHER@::1:11113"]


_VALID = 'spool = "s"\noutput = "o"\n[[allow]]\nae_title = "A"\n'  # a complete file, to which a case adds one line


@pytest.mark.parametrize("text, message", [
    ('spool = "s"\nalow = []\n', "unknown key"),
    ('spool = "s"\n[[forward]]\nae_title = "P"\nhost = "h"\nport = 1\n', "no calling AE title"),
    ('spool = "s"\nport = "x"\n[[allow]]\nae_title = "A"\n', "'port' must be an integer"),
    ('spool = "s"\n[[allow]]\nae_title = "WAY_TOO_LONG_AE_TITLE"\n', "not an AE title"),
    ('spool = "s"\n[[allow]]\nae_title = "A"\n', "would go nowhere"),
    ('spool = [\n', "not valid TOML"),
    (f'timeout_s = inf\n{_VALID}', "timeout_s must be a number from 0.1 to 3600, got inf"),
    (f'timeout_s = nan\n{_VALID}', "timeout_s must be a number from 0.1 to 3600, got nan"),
    (f'jobs = 1000000000\n{_VALID}', "jobs must be an integer from 1 to 256, got 1000000000"),
    (f'max_associations = 0\n{_VALID}', "max_associations must be an integer from 1 to 1024"),
    (f'handshake_s = 1e9\n{_VALID}', "handshake_s must be a number"),
    (f'host = "999.1.1.1"\n{_VALID}', "host must be an IP address to listen on"),
    (f'host = "dexrt.example.org"\n{_VALID}', "host must be an IP address to listen on"),
    (f'nested = {"[" * 5000}{"]" * 5000}\n{_VALID}', "nested too deeply"),
    (f'{_VALID}[[forward]]\nae_title = "P"\nhost = "999.1.1.1"\nport = 104\n', "neither an IP address nor a host"),
    (f'{_VALID}[[allow]]\nae_title = "B"\nhosts = [5]\n', "5 is not an IP address or network"),
    (f'{_VALID}[retry]\ninitial_s = 10\nmax_s = 5\n', "initial_s .* is more than max_s"),
    (f'ledger_entries = 10\n{_VALID}', "ledger_entries must be an integer from 1000"),
    (f'require_signed = false\n{_VALID}', "allow_unsigned = true"),
], ids=["unknown-key", "no-allow", "port-type", "ae-title", "no-destination", "syntax", "timeout-inf", "timeout-nan",
        "jobs-huge", "associations-0", "handshake-huge", "host-999", "host-name", "nesting-5000", "forward-999",
        "allow-int", "retry-order", "ledger-tiny", "require-signed-false"])
def test_config_errors(tmp_path: Path, text: str, message: str) -> None:
    """Every value out of bounds is a ConfigError naming the key: never an OverflowError or RecursionError
    traceback at start, never a node that accepts a billion jobs or an impossible address."""
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config(tmp_path / "bad.toml")


def test_config_file_too_large_is_refused(tmp_path: Path) -> None:
    (tmp_path / "big.toml").write_text(_VALID + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="larger than"):
        build_config(tmp_path / "big.toml")


def test_command_line_values_are_bounded_too(tmp_path: Path, plain_engine_path: Path) -> None:
    from click.testing import CliRunner

    from dexrt.cli import cli

    base = ["serve", "--check", "--allow-ae", "MODALITY", "--spool", str(tmp_path / "spool"),
            "--output", str(tmp_path / "o"), "--engine", str(plain_engine_path), "--allow-unsigned"]
    for extra, message in ((["--jobs", "1000000000"], "jobs must be an integer from 1 to 256"),
                           (["--host", "999.1.1.1"], "host must be an IP address to listen on")):
        result = CliRunner().invoke(cli, [*base, *extra])
        assert result.exit_code == 1 and message in result.output, result.output


@pytest.mark.parametrize("text", ["PACS", "PACS@host", "@host:104", "PACS@host:0", "PACS@host:http"])
def test_bad_forward_option(text: str) -> None:
    with pytest.raises(ConfigError, match="--forward"):
        parse_forward(text)


def test_check_echoes_each_destination(destination: Destination, tmp_path: Path, plain_engine_path: Path) -> None:
    from click.testing import CliRunner

    from dexrt.cli import cli

    dead = f"GONE@{LOOPBACK}:{free_port()}"
    base = ["serve", "--check", "--json", "--allow-ae", "MODALITY", "--spool", str(tmp_path / "spool"),
            "--engine", str(plain_engine_path), "--allow-unsigned", "--forward", destination.address]
    ok = CliRunner().invoke(cli, base)
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert report["ok"] and [c["check"] for c in report["checks"]] == ["engine", "spool",
                                                                       f"destination {destination.address}"]
    bad = CliRunner().invoke(cli, [*base, "--forward", dead])
    assert bad.exit_code == 1
    assert [c["ok"] for c in json.loads(bad.stdout)["checks"]] == [True, True, True, False]
    usage = CliRunner().invoke(cli, ["serve", "--spool", str(tmp_path / "s"), "--output", str(tmp_path / "o")])
    assert usage.exit_code == 1 and "no calling AE title" in usage.output


def test_port_in_use_is_a_clear_error(tmp_path: Path, plain_engine_path: Path) -> None:
    import socket

    from click.testing import CliRunner

    from dexrt.cli import cli

    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        result = CliRunner().invoke(cli, ["serve", "--host", LOOPBACK, "--port", str(taken.getsockname()[1]),
                                          "--allow-ae", "MODALITY", "--output", str(tmp_path / "out"),
                                          "--spool", str(tmp_path / "spool"), "--engine", str(plain_engine_path),
                                          "--allow-unsigned"])
    assert result.exit_code == 1 and "cannot listen on" in result.output, result.output


# -- the node as a process: crash, restart, SIGTERM, DCMTK ---------------------------------------------------------
class NodeProcess:
    """`dexrt serve --json` in a subprocess; its JSON log lines are read from a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.port = free_port()
        command = [sys.executable, "-c", "from dexrt.cli import main; main()", "serve", "--json", "--host",
                   LOOPBACK, "--port", str(self.port), *args]
        with open(log, "ab") as stderr:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        wait_until(lambda: self.events("listening") or self.proc.poll() is not None, 60, "the node to listen")
        assert self.proc.poll() is None, log.read_text()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.read(self.log) if name is None or e.get("event") == name]

    @staticmethod
    def read(log: Path) -> list[dict[str, Any]]:
        """The JSON log lines (every line the node writes to stderr must be one)."""
        return [json.loads(line) for line in log.read_text().splitlines()]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(TIMEOUT)


def test_killed_mid_stream_and_restarted_loses_nothing(destination: Destination, tmp_path: Path,
                                                       plain_engine_path: Path) -> None:
    args = ["--allow-ae", "MODALITY", "--forward", destination.address, "--spool", str(tmp_path / "spool"),
            "--engine", str(plain_engine_path), "--allow-unsigned", "--jobs", "2"]
    sources = [radiograph(128, DX, i) for i in range(40)]
    acked: list[str] = []
    node = NodeProcess(args, tmp_path / "node.log")
    try:
        def on_ack(ds: Any, status: int) -> None:
            assert status == 0x0000
            acked.append(str(ds.SOPInstanceUID))
            if len(acked) == 12:
                node.kill()  # SIGKILL mid-stream: no chance to tidy up

        sender = threading.Thread(target=lambda: send(sources, node.port, on_ack=on_ack))
        sender.start()
        sender.join(TIMEOUT)
        assert not sender.is_alive() and node.proc.returncode == -signal.SIGKILL
        assert 12 <= len(acked) < len(sources)
        # What the sender saw acknowledged is on disk; the rest it sends again to the restarted node.
        node = NodeProcess(args, tmp_path / "restarted.log")
        assert send([s for s in sources if str(s.SOPInstanceUID) not in acked], node.port) == [0] * (
            len(sources) - len(acked))
        # SIGTERM at once, with conversions in flight: the node finishes those, keeps the rest, exits cleanly.
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(TIMEOUT) == 0
        assert node.events("stopping")[-1]["signal"] == "SIGTERM" and node.events("stopped")
        assert {"listening", "received"} <= {e.get("event") for e in node.events()}
        node = NodeProcess(args, tmp_path / "third.log")
        wait_until(lambda: len(destination.unique()) == 2 * len(sources), 40, "every source's outputs")
        assert_derived(destination, sources)
        wait_until(lambda: not list((tmp_path / "spool" / "received").glob("*.dcm")), TIMEOUT, "an empty spool")
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(TIMEOUT) == 0
        logged = {e.get("event") for log in ("node", "restarted", "third")
                  for e in NodeProcess.read(tmp_path / f"{log}.log")}
        assert {"received", "converted", "forwarded", "stopped"} <= logged
    finally:
        if node.proc.poll() is None:
            node.kill()


def test_sigterm_stops_within_drain_time_whatever_the_network_does(tmp_path: Path, plain_engine_path: Path) -> None:
    """`dexrt serve` with TLS, three connections that never send a ClientHello and an allowed sender holding an
    idle association: SIGTERM ends the process cleanly within drain_s (plus its own exit)."""
    pki = make_pki(tmp_path)
    (tmp_path / "serve.toml").write_text(
        f'spool = "spool"\noutput = "out"\nengine = "{plain_engine_path}"\nallow_unsigned = true\n'
        'handshake_s = 60\ndrain_s = 2\n[[allow]]\nae_title = "MODALITY"\n'
        f'[tls]\ncert = "{pki["node"]}"\nkey = "{pki["node_key"]}"\n')
    node = NodeProcess(["--config", str(tmp_path / "serve.toml")], tmp_path / "node.log")
    silent = idle_connections(node.port, 3)
    holder = client().associate(LOOPBACK, node.port, ae_title="DEXRT", tls_args=(sender_tls(pki, None), "localhost"))
    try:
        assert holder.is_established
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(2 + 10) == 0  # drain_s, then the engine closes and the process exits
        assert node.events("stopping")[-1]["signal"] == "SIGTERM" and node.events("stopped")
    finally:
        for sock in silent:
            sock.close()
        if holder.is_established:
            holder.abort()
        if node.proc.poll() is None:
            node.kill()


# -- deployment: the systemd unit and the example configuration in docs/deploy/ ------------------------------------
DEPLOY = Path(__file__).parent.parent / "docs" / "deploy"


def _unit() -> dict[str, str]:
    import configparser

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "dexrt-serve.service")
    return dict(parser["Service"])


def test_example_configuration_is_valid() -> None:
    config = build_config(DEPLOY / "serve.toml")
    assert config.require_signed and config.forward[0].name == "PACS@10.1.9.9:104"
    assert config.drain_s < float(_unit()["TimeoutStopSec"]), "systemd would kill the node before it drains"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit (its dexrt path pointed at this installation's, which must exist)."""
    dexrt_bin = Path(sys.executable).parent / "dexrt"
    if not dexrt_bin.exists():
        pytest.skip(f"{dexrt_bin} is not installed (the console script)")
    unit = tmp_path / "dexrt-serve.service"
    unit.write_text((DEPLOY / "dexrt-serve.service").read_text().replace("/opt/dexrt/venv/bin/dexrt", str(dexrt_bin)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_unit_command_lines_start_check_and_stop(destination: Destination, tmp_path: Path) -> None:
    """The unit's own ExecStartPre (--check) and ExecStart lines, run as systemd would run them (without its
    sandbox: no systemd here), then its KillSignal: exit 0 within TimeoutStopSec."""
    import shlex

    unit = _unit()
    port = free_port()
    config = tmp_path / "serve.toml"
    config.write_text(f'host = "{LOOPBACK}"\nport = {port}\nspool = "spool"\noutput = "out"\ndrain_s = 2\n'
                      f'[[allow]]\nae_title = "MODALITY"\n[[forward]]\nae_title = "{destination.ae_title}"\n'
                      f'host = "{LOOPBACK}"\nport = {destination.port}\n')

    def command(key: str) -> list[str]:
        words = shlex.split(unit[key])
        assert words[0] == "/opt/dexrt/venv/bin/dexrt" and "/etc/dexrt/serve.toml" in words
        return [sys.executable, "-c", "from dexrt.cli import main; main()", *words[1:]]

    env = {**os.environ, "DEXRT_TRUSTED_KEYS": ""}  # the unit's /etc/dexrt/trusted_keys does not exist here
    check = subprocess.run([w.replace("/etc/dexrt/serve.toml", str(config)) for w in command("ExecStartPre")],
                           check=False, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    log = tmp_path / "node.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([w.replace("/etc/dexrt/serve.toml", str(config)) for w in command("ExecStart")],
                                stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=tmp_path)
    try:
        wait_until(lambda: '"event": "listening"' in log.read_text() or proc.poll() is not None, 60, "listening")
        assert send([radiograph(64)], port) == [0x0000]
        wait_until(lambda: len(destination.unique()) == 2, TIMEOUT, "the outputs")
        proc.send_signal(getattr(signal, unit["KillSignal"]))
        assert proc.wait(float(unit["TimeoutStopSec"])) == 0
    finally:
        if proc.poll() is None:
            proc.kill()




def test_a_node_that_requires_signed_engines_refuses_an_unsigned_one(tmp_path: Path, plain_engine_path: Path
                                                                     ) -> None:
    """`--require-signed` (or `require_signed = true`): --check reports it, and the node does not start."""
    from click.testing import CliRunner

    from dexrt.cli import cli

    base = ["serve", "--allow-ae", "MODALITY", "--spool", str(tmp_path / "spool"), "--output", str(tmp_path / "o"),
            "--engine", str(plain_engine_path), "--require-signed", "--host", LOOPBACK, "--port", "0"]
    checked = CliRunner().invoke(cli, [*base, "--check", "--json"])
    assert checked.exit_code == 1
    engine_check = json.loads(checked.stdout)["checks"][0]
    assert engine_check["check"] == "engine" and not engine_check["ok"]
    assert "a signed engine is required" in engine_check["detail"]
    started = CliRunner().invoke(cli, base)
    assert started.exit_code == 1 and "a signed engine is required" in started.output
    signed_default = CliRunner().invoke(cli, [a for a in base if a != str(plain_engine_path) and a != "--engine"]
                                        + ["--check", "--json"])
    assert signed_default.exit_code == 0, signed_default.output  # the bundled model is signed by the project key


def test_strict_and_input_spacing_reach_the_conversion(tmp_path: Path, plain_engine_path: Path) -> None:
    from dexrt.pipelines.serve.config import build_config

    config = build_config(spool=tmp_path / "spool", output=tmp_path / "out", allow=(parse_allow("MODALITY"),),
                          strict=True, input_spacing_mm=0.2, engine=plain_engine_path)
    node = Node(config, dexrt.Engine(plain_engine_path))
    assert node.converter.strict and node.converter.input_spacing_mm == 0.2
    with pytest.raises(ConfigError, match="input_spacing_mm"):
        build_config(spool=tmp_path / "spool", output=tmp_path / "out", allow=(parse_allow("MODALITY"),),
                     input_spacing_mm=-1.0)
