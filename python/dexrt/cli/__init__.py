"""The `dexrt` command line. Each subcommand lives in its own module and is imported only when it runs, so
`dexrt infer` never pays for (or needs) the trainer's PyTorch."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from typing import Any

import click

# name -> "module:attribute" of the click command
_COMMANDS = {
    "infer": "dexrt.cli.infer:infer",
    "build-engine": "dexrt.cli.build_engine:build_engine",
    "export": "dexrt.cli.export:export",
    "synth": "dexrt.cli.synth:synth",
    "train": "dexrt.cli.train:train",
    "bench": "dexrt.cli.bench:bench",
    "eval": "dexrt.cli.eval:eval_",
    "keygen": "dexrt.cli.keygen:keygen",
    "sign": "dexrt.cli.sign:sign",
    "serve": "dexrt.cli.serve:serve",
    "fit": "dexrt.cli.fit:fit",
}


class _KnownError(click.ClickException):
    """A DexrtError shown as `Error: ...` with a hint for the traceback; exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.message}", err=True)
        click.echo("(set DEXRT_DEBUG=1 to see the traceback)", err=True)


class _LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        from dexrt._errors import DexrtError

        try:
            return super().invoke(ctx)
        except DexrtError as exc:
            if os.environ.get("DEXRT_DEBUG"):
                raise
            raise _KnownError(str(exc)) from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, target in _COMMANDS.items() if _available(target))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None or not _available(target):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


def _available(target: str) -> bool:
    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dexrt")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """dexrt: dual-energy (bone, soft-tissue) X-ray images from one single-energy radiograph."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def main() -> None:
    """Console entry point."""
    cli(prog_name="dexrt")
