"""`trainctl secrets`: make master keys and re-encrypt stored SCADA URLs with the current one."""

from __future__ import annotations

import click

from training_tasks.cli.common import _service
from training_tasks.protocol.keyring import Keyring, generate_key

ROTATION_STEPS = (
    "To rotate: put the new entry first in ML_MASTER_KEYS and keep the old ones after it, "
    "restart every service process (workers, beat, Flower, prediction services), then run "
    "`trainctl secrets reencrypt`. Drop an old key once no kept model version was sealed with it."
)


@click.group()
def secrets() -> None:
    """Master keys (ML_MASTER_KEYS) for SCADA URLs and model files at rest."""


@secrets.command("new-key", epilog=ROTATION_STEPS)
@click.option("--id", "key_id", default=None, help="Key id (default: k<date>-<4 hex digits>).")
def new_key(key_id: str | None) -> None:
    """Print a fresh keyid:base64 entry for ML_MASTER_KEYS (32 random bytes)."""
    try:
        entry = generate_key(key_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--id") from None
    click.echo(entry)
    click.echo(ROTATION_STEPS, err=True)


@secrets.command("reencrypt")
def reencrypt() -> None:
    """Encrypt every stored SCADA URL with the current (first) key of ML_MASTER_KEYS.

    Plain URLs stored before a key was set are encrypted too. Runs in one transaction: if any
    URL cannot be decrypted (its key is no longer listed), nothing changes and the organization
    is named.
    """
    from training_tasks.registry.orgs import reencrypt_scada_urls  # SQLAlchemy: this command only

    svc = _service()
    try:
        keyring = Keyring.parse(svc.rt.settings.master_keys)
        found = reencrypt_scada_urls(svc.rt.engine, keyring, actor="cli", now=svc.rt.now())
    finally:
        svc.close()
    total = sum(found.values())
    if not total:
        click.echo("no SCADA URL is stored in the database; nothing to re-encrypt")
        return
    current = keyring.current.key_id if keyring.current else "?"
    sources = ", ".join(
        f"{count} {'plain' if was == 'plain' else f'under key {was}'}"
        for was, count in sorted(found.items())
    )
    click.echo(f"re-encrypted {total} SCADA URL(s) with key {current} ({sources})")
