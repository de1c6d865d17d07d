"""What every `close-sync` command shares once it runs: where the API key is, and the one-line failure.

Kept apart from pipeline/cli.py so the commands registered there (export, snapshot-sync) can use it
without importing the module that imports them, and free of Beam so `--help` and the commands that
only talk to Close (validate, replay, export) start without loading it.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import click

from closecrm.wiring import DEFAULT_BUDGET_SHARE, KeySource
from transforms.objects import BEAM_OBJECTS

if TYPE_CHECKING:
    from pipeline.config import JobConfig

log = logging.getLogger("pipeline.cli")

# The packages whose debug logs --verbose shows; Beam's, httpx's and aiohttp's stay at warnings.
VERBOSE_LOGGERS = ("pipeline", "closecrm", "transforms")


def setup_logging(verbose: bool) -> None:
    """--verbose: this job's debug logs on stderr, each line naming its logger."""
    if not verbose:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in VERBOSE_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        if not any(getattr(h, "close_sync_verbose", False) for h in logger.handlers):
            handler.close_sync_verbose = True  # type: ignore[attr-defined]
            logger.addHandler(handler)


def warn(config: JobConfig) -> None:
    """The config's warnings (valid, but almost surely not meant), one line each on stderr."""
    for line in config.warnings():
        click.echo(f"warning: {line}", err=True)


async def check_close(close_url: str, keys: KeySource, config: JobConfig, budget_share: float = DEFAULT_BUDGET_SHARE) -> int:
    """The key, the settings and every custom field and status the mappings name, checked against
    Close before anything is written (a wrong one makes Close answer 400 to every request); raises
    SettingsError with each problem and its fix. Returns the calls it made."""
    from closecrm.engine.settings_check import check_settings
    from closecrm.wiring import client_for

    references = config.close_references()
    client = client_for(close_url, keys, budget_share=budget_share)
    try:
        found = await check_settings(client, config.settings_model(), references)
    finally:
        await client.aclose()
    log.debug(
        "Close at %s: key accepted; custom fields: %d lead, %d contact; %d reference(s) from the mappings checked",
        close_url,
        len(found.get("lead", ())),
        len(found.get("contact", ())),
        len(references),
    )
    return client.calls


def check_input_files(pattern: str) -> list[str]:
    """The files ``--input`` matches, when some can be read; else ValueError with the fix.

    Beam reads a glob that matches nothing as no events, warns about files of no known format and
    only then fails on a missing file: each would end a run with nothing done and exit 0.
    """
    from apache_beam.io.filesystems import FileSystems

    from pipeline.sources import file_format

    try:
        matched = sorted(md.path for md in FileSystems.match([pattern])[0].metadata_list)
    except Exception as exc:  # noqa: BLE001 - any filesystem's error
        if "://" in pattern:
            # a remote store the launcher may not see (credentials live on the workers): leave it to them
            log.debug("--input %s: not checked here (%s)", pattern, type(exc).__name__)
            return []
        raise ValueError(f"--input {pattern}: cannot list it ({type(exc).__name__}): check the path") from None
    if not matched:
        if any(c in pattern for c in "*?["):
            raise ValueError(f"--input {pattern} matches no file: check the directory and the pattern.")
        raise ValueError(f"--input {pattern}: no such file: check the path.")
    readable = [path for path in matched if file_format(path)]
    if not readable:
        shown = ", ".join(matched[:3]) + (f" and {len(matched) - 3} more" if len(matched) > 3 else "")
        raise ValueError(
            f"--input {pattern} matches no file close-sync reads ({shown}): give .jsonl, .json or .ndjson "
            "(optionally .gz), .avro or .parquet files."
        )
    skipped = len(matched) - len(readable)
    log.debug("--input %s: %d file(s) to read%s", pattern, len(readable), f", {skipped} of no known format" if skipped else "")
    return readable


def key_source(api_key_file: str | None, config: JobConfig) -> KeySource:
    """--api-key-file, else the config's env var, else the config's key file."""
    return KeySource(
        env_var=config.settings.api_key_env,
        path=api_key_file,
        fallback_path=config.settings.api_key_file,
        objects=BEAM_OBJECTS,
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

    from closecrm.api.client import CloseAPIError
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
        # one sentence per problem, each with its fix
        return _one_line(" ".join(p if p.endswith(".") else p + "." for p in exc.problems))
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
