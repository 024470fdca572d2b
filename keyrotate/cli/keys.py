"""`keys`, `keys residue KID`, `keys destroy KID`: key ids, their lifecycle states, where a
key still lives, and destroying a retired key's copies with evidence (README, "Keys")."""

from __future__ import annotations

import click

from keyrotate.cli.options import environment, json_option, load_context
from keyrotate.cli.output import emit, say
from keyrotate.config.context import Context
from keyrotate.config.manifest import parse_duration
from keyrotate.rotation.destroy import destroy_key
from keyrotate.rotation.key_inventory import find
from keyrotate.rotation.keys import keys as list_keys
from keyrotate.rotation.residue import residue


@click.group(invoke_without_command=True)
@click.option("--env", "env_name", metavar="ENV", help="An environment of the manifest.")
@click.option("--manifest", "manifest_path", metavar="PATH",
              help="keyrotate.toml (default: found here or above).")
@click.option("--due", metavar="AGE", help="The cryptoperiod (e.g. 90d); default: each secret's max_age.")
@json_option
@click.pass_context
def keys(click_ctx: click.Context, env_name: str | None, manifest_path: str | None,
         due: str | None, as_json: bool) -> None:
    """Key ids of an environment and their lifecycle states (NIST SP 800-57: pre-activation,
    active, deactivated, compromised, destroyed): since when, who, which rotation, where each
    lives. `keys --env ENV` lists them; exit 1 when an active key is past its cryptoperiod."""

    if click_ctx.invoked_subcommand is not None:
        return
    if env_name is None:
        raise click.UsageError("Missing option '--env'.")
    env = load_context(env_name, manifest_path)
    emit(list_keys(env, parse_duration(due, "--due") if due else None), as_json)


@keys.command("residue")
@click.argument("kid")
@environment
@json_option
def keys_residue(kid: str, env: Context, as_json: bool) -> None:
    """Every place the key KID (a kid or a fingerprint) still lives, and until when."""

    emit(residue(env, find(env, kid)), as_json)


@keys.command("destroy")
@click.argument("kid")
@environment
@click.option("--yes", is_flag=True, help="Really destroy (without it: show what would go).")
@click.option("--force", is_flag=True,
              help="Destroy even while Worker versions may still read it (never while rows "
                   "or objects are sealed under it, nor while a serving version seals new "
                   "rows under it).")
@json_option
def keys_destroy(kid: str, env: Context, yes: bool, force: bool, as_json: bool) -> None:
    """Destroy every copy of the retired key KID in the stores keyrotate controls, record it,
    and report what remains outside keyrotate's reach. Refuses (exit 2, naming each
    blocker) while rows or objects open under the key or a serving Worker version seals
    under it, and, unless --force, while Worker versions may still read it."""

    emit(destroy_key(env, kid, yes, force, say), as_json)


COMMANDS = [keys]
