"""`dexrt sign`: sign an existing engine bundle (or replace its signature)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("bundle", metavar="BUNDLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Ed25519 private key (PEM) from `dexrt keygen`.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the signed bundle here (default: sign BUNDLE in place).")
def sign(bundle: Path, key_path: Path, output: Path | None) -> None:
    """Sign BUNDLE's manifest with KEY. The bundle is verified first; its manifest and payload are unchanged."""
    from dexrt.runtime.bundle import sign_bundle
    from dexrt.runtime.signing import load_private_key, public_key_of

    key = load_private_key(key_path)
    sign_bundle(bundle, key, output)
    click.echo(f"Signed {output or bundle} with key {public_key_of(key).key_id}")
