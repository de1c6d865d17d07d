"""What every `close-sync` command shares once it runs: where the API key is, and the one-line failure.

Kept apart from pipeline/cli.py so the commands registered there (export, snapshot-sync) can use it
without importing the module that imports them, and free of Beam so `--help` and the commands that
only talk to Close (validate, replay, export) start without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from closecrm.credentials import KeySource

if TYPE_CHECKING:
    from pipeline.config import JobConfig


def key_source(api_key_file: str | None, config: JobConfig) -> KeySource:
    """--api-key-file, else the config's env var, else the config's key file."""
    return KeySource(
        env_var=config.settings.api_key_env, path=api_key_file, fallback_path=config.settings.api_key_file
    )


def fail(ctx: click.Context, exc: BaseException) -> None:
    """One line that says what and how to fix; the traceback only with --verbose."""
    if ctx.find_root().obj and ctx.find_root().obj.get("verbose"):
        raise exc
    raise click.ClickException(explain(exc, ctx.params.get("close_url"))) from None


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def explain(exc: BaseException, close_url: str | None = None) -> str:
    """The one line a user sees for a failure: what went wrong and how to fix it."""
    import httpx

    from closecrm.client import CloseAPIError
    from closecrm.engine import SettingsError
    from pipeline.config import ConfigError

    where = close_url or "the --close-url given"
    # the engine raises SettingsError `from None`; the Close error that caused it is still its context
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, SettingsError) and isinstance(cause, CloseAPIError):
        if cause.status is None:
            exc = cause  # no response at all: explained below as unreachable
        elif cause.status == 404:
            return f"Close at {where} answered 404 for GET /me/: check --close-url (it ends in /api/v1/)."
    if isinstance(exc, ConfigError):
        where_file = f" {exc.source}" if exc.source else ""
        fix = "check the --config path" if any("cannot read" in p for p in exc.problems) else (
            "fix the file; README, Configuration, lists every key"
        )
        return f"invalid config{where_file}: " + "; ".join(exc.problems) + f" ({fix})"
    if isinstance(exc, SettingsError):
        return _one_line(str(exc))
    if isinstance(exc, CloseAPIError) and exc.status in (401, 403):
        return f"Close rejected the API key ({exc.status}): set $CLOSE_API_KEY or --api-key-file to a valid key."
    if isinstance(exc, CloseAPIError) and exc.status is None:
        return (
            f"cannot reach Close at {where} ({exc.body}): check --close-url and the network "
            "(the simulator: close-sync sim --port 8765 --api-key KEY)."
        )
    if isinstance(exc, CloseAPIError):
        return _one_line(f"Close answered {exc.status} to {exc.method} {exc.path}: {exc.body!r}")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot reach Close at {where}: check --close-url and the network."
    if isinstance(exc, RuntimeError | ValueError | OSError):
        return _one_line(str(exc))
    return _one_line(f"{type(exc).__name__}: {exc}")
