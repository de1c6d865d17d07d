"""The job's state location: the one place every command that writes to Close (run, snapshot-sync,
replay) keeps what must outlive a run, today the created-id ledger (closecrm/engine/writes/ledger.py).

It is named by one option, ``--state-location``, and never follows where a run's dead letters go:
people give each run (or each day) its own dead-letter folder, and a ledger kept there would be a
new, empty one for every run, so a run started while Close's search still hides what the previous
one created would create it again. Locally it defaults to the user's cache directory, which every
run of this user shares. Workers of a distributed runner cannot see that directory, so there the
option is required and must be a URL they all reach (gs://, s3://, ...): without it, or with a
local path, the command stops before anything runs.

``ledger_location`` is the single function the commands call; ``announce`` prints the line every
command shows at start.
"""

from __future__ import annotations

import sys
from typing import IO
from urllib.parse import urlsplit

from closecrm.engine.writes.ledger import ledger_dir, user_cache_root

OPTION = "--state-location"
OFF_OPTION = "--no-created-ids"
# Runner environments whose workers run on the launching machine and so see its files.
_THIS_MACHINE_ENVIRONMENTS = ("", "LOOPBACK", "PROCESS")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class StateLocationError(ValueError):
    """The state location given (or its absence) cannot work for this runner; the message has the fix."""


def runs_on_this_machine(options: object) -> bool:
    """Whether the runner Beam's ``options`` name runs its workers on this machine (the DirectRunner,
    or Prism in its default loopback environment), so that they share this machine's files."""
    from apache_beam.options.pipeline_options import PortableOptions

    from pipeline.runners import is_direct, is_prism

    if is_direct(options):  # type: ignore[arg-type]
        return True
    if not is_prism(options):  # type: ignore[arg-type]
        return False
    portable = options.view_as(PortableOptions)  # type: ignore[attr-defined]
    environment = (portable.environment_type or "").upper()
    if environment == "EXTERNAL":  # a worker pool: on this machine when its address is a loopback one
        address = portable.environment_config or ""
        return urlsplit(f"//{address}").hostname in _LOOPBACK_HOSTS
    return environment in _THIS_MACHINE_ENVIRONMENTS


def _is_shared_url(location: str) -> bool:
    scheme = urlsplit(location).scheme if "://" in location else ""
    return bool(scheme) and scheme.lower() != "file"


def state_location(given: str | None, *, on_this_machine: bool) -> str:
    """The state location: ``given``, else the user's cache directory (runs on this machine only).

    Raises `StateLocationError` when a distributed run has none, or only a local path, and when the
    location carries credentials (it is printed, and handed to every worker).
    """
    if given:
        parts = urlsplit(given) if "://" in given else None
        if parts is not None and (parts.password or parts.username or parts.query):
            raise StateLocationError(
                f"{OPTION} must not carry credentials (user:password@ or a ?query): give the workers "
                "access to the bucket through the runner's own credentials instead"
            )
        if not on_this_machine and not _is_shared_url(given):
            raise StateLocationError(
                f"{OPTION} {given} is a path on this machine, which the workers of a distributed runner "
                "do not share: give a URL they all reach (gs://BUCKET/close-sync-state, s3://...), "
                f"or {OFF_OPTION} to keep no ledger"
            )
        return given
    if on_this_machine:
        return user_cache_root()
    raise StateLocationError(
        f"a run on a distributed runner needs {OPTION} URL, storage every worker reaches "
        f"(gs://BUCKET/close-sync-state, s3://...), for the ledger of records the job created; "
        f"or {OFF_OPTION} to keep none (a re-run while Close's search lags may then create them twice)"
    )


def ledger_location(
    given: str | None, close_url: str, *, on_this_machine: bool, enabled: bool = True
) -> str | None:
    """The created-id ledger's directory for ``close_url`` under the state location, or None when
    the ledger is turned off. ``given`` is the ``--state-location`` value (None: the default);
    raises `StateLocationError` as `state_location` does, before anything runs."""
    if not enabled:
        return None
    return ledger_dir(state_location(given, on_this_machine=on_this_machine), close_url)


def announce(ledger: str | None, out: IO[str] | None = None) -> None:
    """The one line every command prints at start: where its state is (never a secret: a location
    with credentials is refused by `state_location`)."""
    if ledger is None:
        line = f"state location: none ({OFF_OPTION}): created ids are not remembered across runs"
    else:
        root = ledger.rstrip("/").rsplit("/created-ids/", 1)[0]
        line = f"state location: {root} (created-id ledger: {ledger})"
    print(line, file=out or sys.stderr, flush=True)
