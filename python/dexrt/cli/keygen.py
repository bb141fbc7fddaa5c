"""`dexrt keygen`: a new Ed25519 key pair for signing engine bundles."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("private_key", metavar="KEY", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default="", help="A name stored with the public key (shown when a bundle is verified).")
@click.option("--json", "as_json", is_flag=True, help="Print the public key as JSON on stdout.")
def keygen(private_key: Path, name: str, as_json: bool) -> None:
    """Write a new private key to KEY (PEM, readable by you only) and its public key to KEY.pub.

    Sign bundles with `dexrt build-engine --sign KEY` or `dexrt sign`; give KEY.pub to the machines that should
    trust them (a trusted-keys file, see DEXRT_TRUSTED_KEYS in docs/runtime.md). Keep KEY out of repositories.
    """
    from dexrt.runtime.signing import generate_keypair

    public = generate_keypair(private_key, name)
    if as_json:
        click.echo(json.dumps({"private_key": str(private_key), "public_key_file": f"{private_key}.pub",
                               "public_key": public.line(), "key_id": public.key_id}, indent=2))
    else:
        click.echo(f"Wrote {private_key} (private, keep it secret) and {private_key}.pub (key {public.key_id}):\n"
                   f"{public.line()}")
