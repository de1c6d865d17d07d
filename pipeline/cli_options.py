"""Click options shared by the commands that talk to Close (run, validate, replay, export, snapshot-sync),
and the checks every argument gets before anything runs: secrets, unknown options, bad values.

A bad argument stops the command with one line that names the flag and the fix (exit 2), not with
click's usage block: the line is what a user (or a script's log) sees first.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import IO, Any
from urllib.parse import urlsplit

import click

from closecrm.wiring import DEFAULT_BUDGET_SHARE, DEFAULT_CLOSE_URL


class ArgumentError(click.UsageError):
    """A usage error shown as one line, ``Error: <what> <fix>``, with click's usage exit status 2."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"Error: {self.format_message()}", file=file, err=file is None)


def _close_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A URL httpx can reach: http(s), a host, and (Close's layout) a path; else one line with the fix."""
    parts = urlsplit(value or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ArgumentError(
            f"--close-url {value!r} is not an http(s) URL: write it in full, like {DEFAULT_CLOSE_URL} "
            "or http://127.0.0.1:8765/api/v1/ for the simulator."
        )
    return value


CLOSE_URL = click.option(
    "--close-url",
    default=DEFAULT_CLOSE_URL,
    show_default=True,
    callback=_close_url,
    help="Base URL of the Close API.",
)


def _api_key_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # A local path is checked now; gs:// and other Beam filesystems are read on the workers, where
    # only they may have access.
    if value is None or "://" in value:
        return value
    if not os.path.isfile(value):
        what = "is a directory" if os.path.isdir(value) else "does not exist"
        raise ArgumentError(
            f"--api-key-file {value} {what}: give the path of a file holding the Close API key, "
            "or leave the flag out and set $CLOSE_API_KEY."
        )
    if not os.access(value, os.R_OK):
        raise ArgumentError(f"--api-key-file {value} is not readable by this user: fix its permissions.")
    return value


API_KEY_FILE = click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    callback=_api_key_file,
    help="Read the API key from this file instead of $CLOSE_API_KEY.",
)


def _budget_share(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise ArgumentError(
            f"--budget-share {value:g} is out of range: give the share of the key's rate budget this job "
            "may use, above 0 and at most 1 (e.g. 0.25 for each of 4 workers)."
        )
    return value


def budget_share_option(help_text: str = "Share of the key's rate budget for each worker (0 < F <= 1).") -> Any:
    return click.option(
        "--budget-share", type=float, default=DEFAULT_BUDGET_SHARE, show_default=True, callback=_budget_share, help=help_text
    )


def state_location_option() -> Any:
    """--state-location, shared by the commands that write to Close (run, snapshot-sync, replay)."""
    return click.option(
        "--state-location",
        "state_location",
        metavar="DIR_OR_URL",
        help="Where the job keeps its state across runs of every command: the ledger of records it "
        "created, so a re-run while Close's search lags does not create them twice. Never the "
        "--dead-letter folder. Default: the user's cache (~/.cache/close-sync); distributed runners "
        "need a URL every worker reaches (gs://..., s3://...).",
    )


def no_created_ids_option() -> Any:
    return click.option(
        "--no-created-ids", is_flag=True, help="Keep no ledger of created records across runs."
    )


def _replaced_by_state_location(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise ArgumentError(
            f"--created-ids-dir is replaced by --state-location: give --state-location {value} "
            "(the same folder works; the ledger stays in created-ids/ under it)."
        )


def replaced_created_ids_dir_option() -> Any:
    """The old name of --state-location, refused with the new one so a script names one option."""
    return click.option(
        "--created-ids-dir", hidden=True, expose_value=False, callback=_replaced_by_state_location
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


# Runners that hand the options Python does not know to their job server, which has its own (Flink's
# --checkpointing_interval, say): an unknown option spelled as Beam spells options may be one of those.
_JOB_SERVER_RUNNERS = ("flinkrunner", "sparkrunner", "portablerunner", "prismrunner")
_BEAM_STYLE = re.compile(r"^--[A-Za-z][A-Za-z0-9_]*$")  # Beam's and Java's options: no dashes inside


@lru_cache(maxsize=1)
def _beam_parser() -> Any:
    """The parser Beam itself builds from every registered PipelineOptions class (what --runner,
    --project, --temp_location … are checked against when a pipeline starts)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    built: list[Any] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=built.append)
    return built[0]


def beam_option_names() -> list[str]:
    return [flag for action in _beam_parser()._actions for flag in action.option_strings if flag.startswith("--")]


def _parse_beam(args: Sequence[str]) -> tuple[Any, list[str]]:
    """Beam's parse of ``args``; a value Beam refuses (``--direct_num_workers two``) is one line, not
    argparse's usage text and exit."""
    import contextlib
    import io

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return _beam_parser().parse_known_args(list(args))
    except SystemExit:
        problem = said.getvalue().strip().splitlines()[-1:] or ["invalid value"]
        text = problem[0].split("error: ", 1)[-1]
        raise ArgumentError(f"Beam option: {text}: fix its value (see Beam's pipeline options).") from None


def _runner(known: Any) -> str:
    runner = getattr(known, "runner", None)
    return str(runner or "DirectRunner").rsplit(".", 1)[-1].lower()


def refuse_unknown_options(args: Sequence[str], own: Iterable[str], command: str) -> list[str]:
    """Stop when an extra argument is neither one of ``own`` (the command's flags) nor a Beam option.

    Beam only logs an option it cannot parse and runs anyway, so a misspelled close-sync flag
    (``--dead-leter``) would run the job without it. Returns the unknown options passed on to a
    job-server runner (see _JOB_SERVER_RUNNERS), for the caller to mention.
    """
    if not args:
        return []
    own_names = sorted(set(own))
    known, unknown = _parse_beam(args)
    job_server = _runner(known).endswith(_JOB_SERVER_RUNNERS)
    passed: list[str] = []
    follows_passed_flag = False
    for arg in unknown:
        if arg == "--":
            break
        if not arg.startswith("-"):
            if follows_passed_flag:  # the value of an option left to the job server
                follows_passed_flag = False
                continue
            raise ArgumentError(
                f"unexpected argument {arg!r}: {command} takes no positional arguments; if it is one of the "
                "files of an unquoted glob, quote the glob (--input 'events/*.jsonl') so close-sync "
                "expands it, not the shell."
            )
        name = arg.split("=", 1)[0]
        if job_server and _BEAM_STYLE.match(name):
            passed.append(name)
            follows_passed_flag = "=" not in arg
            continue
        raise ArgumentError(_unknown_option_message(name, own_names, command))
    return passed


def _unknown_option_message(name: str, own: list[str], command: str) -> str:
    beam = beam_option_names()
    # Compare with dashes and underscores alike, so --temp-location finds --temp_location.
    def folded(flag: str) -> str:
        return flag.lower().replace("_", "-")

    candidates = {folded(flag): flag for flag in [*beam, *own]}
    match = difflib.get_close_matches(folded(name), list(candidates), n=1, cutoff=0.6)
    hint = f"did you mean {candidates[match[0]]}? " if match else ""
    return (
        f"unknown option {name}: neither close-sync {command} nor Beam knows it; {hint}"
        f"see close-sync {command} --help (Beam pipeline options such as --runner are passed on to Beam)."
    )
