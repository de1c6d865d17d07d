"""Click options shared by the commands that talk to Close (run, validate, replay, export, snapshot-sync)."""

from __future__ import annotations

import re

import click

from closecrm.credentials import DEFAULT_CLOSE_URL

CLOSE_URL = click.option(
    "--close-url", default=DEFAULT_CLOSE_URL, show_default=True, help="Base URL of the Close API."
)
API_KEY_FILE = click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    help="Read the API key from this file instead of $CLOSE_API_KEY.",
)


# Runners print their options (Beam logs an unknown one with its value, Dataflow shows them all in its
# console), so a secret given as a flag is already leaked once the job starts. These name parts mark a
# flag as one that carries a secret; `-file` / `-env` variants name where a secret is, not the secret.
_SECRET_PARTS = re.compile(r"(^|[-_])(api[-_]?key|apikey|key|secret|token|password|passwd|pwd|credentials?)($|[-_])")
_POINTER_SUFFIXES = ("-file", "-path", "-env", "-id", "-name")
_NOT_SECRETS = ("kms-key",)  # Dataflow's --dataflow_kms_key names a Cloud KMS key; it holds no secret
# Close API keys look like `api_` and a long run of letters, digits and dots.
_CLOSE_KEY_SHAPE = re.compile(r"^api_[A-Za-z0-9.]{16,}$")


def secret_flag(arg: str) -> str | None:
    """The flag name when ``arg`` is an option that would carry a secret as its value, else None."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    name = arg.lstrip("-").split("=", 1)[0]
    canonical = name.lower().replace("_", "-")
    if canonical.endswith(_POINTER_SUFFIXES) or canonical.endswith(_NOT_SECRETS):
        return None
    if not _SECRET_PARTS.search(canonical):
        return None
    return "--" + name


def refuse_secrets_in_args(args: list[str] | tuple[str, ...]) -> None:
    """Stop before anything runs when an argument is, or carries, a secret; never echo the value."""
    for position, arg in enumerate(args, start=1):
        flag = secret_flag(arg)
        if flag is not None:
            raise click.UsageError(
                f"{flag} looks like it carries a secret, and command-line values are shown by runners "
                "and logs: pass secrets in the environment or a file (the Close API key: $CLOSE_API_KEY "
                "or --api-key-file)."
            )
        if _CLOSE_KEY_SHAPE.match(arg):
            raise click.UsageError(
                f"argument {position} looks like a Close API key, and command-line values are shown by "
                "runners and logs: put it in $CLOSE_API_KEY or a file named by --api-key-file."
            )
