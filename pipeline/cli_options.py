"""Click options shared by the commands that talk to Close (run, validate, replay, export, snapshot-sync)."""

from __future__ import annotations

import click

from pipeline.runjob import DEFAULT_CLOSE_URL

CLOSE_URL = click.option(
    "--close-url", default=DEFAULT_CLOSE_URL, show_default=True, help="Base URL of the Close API."
)
API_KEY_FILE = click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    help="Read the API key from this file instead of $CLOSE_API_KEY.",
)
