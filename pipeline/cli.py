"""The `close-sync` console script: one entry point, one subcommand per job."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--verbose", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Keep Close CRM leads and contacts in sync with customer events."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


@main.command()
@click.option("--host", default="127.0.0.1", help="Interface to listen on.")
@click.option("--port", default=8765, type=int, help="Port to listen on.")
@click.option("--api-key", required=True, help="The key clients must send (a test key, not a real one).")
@click.option("--seed", type=click.Path(exists=True, dir_okay=False), help="JSON state to start from.")
@click.option("--search-rate", type=float, default=16.0, help="Search requests per second per key.")
@click.option("--write-rate", type=float, default=40.0, help="Requests per second per key for other groups.")
@click.option("--time-scale", type=float, default=1.0, help="Multiply every rate by this (fast benchmarks).")
@click.option("--no-limits", is_flag=True, help="Disable rate limiting.")
@click.option("--latency-ms", type=float, default=0.0, help="Fixed response latency.")
@click.option("--jitter-ms", type=float, default=0.0, help="Random extra latency, up to this.")
@click.option("--search-lag", type=float, default=0.0, help="Seconds before a write is visible to search.")
@click.option("--fault-rate", type=float, default=0.0, help="Share of requests answered with a random 5xx.")
@click.option("--ambiguous-rate", type=float, default=0.0, help="Share of writes committed then failed.")
@click.option("--ratelimit-separator", type=click.Choice([",", ";"]), default=",", help="Header separator.")
@click.option("--snapshot", type=click.Path(dir_okay=False), help="Write the state here on shutdown.")
def sim(**kwargs: object) -> None:
    """Serve a local Close API at http://HOST:PORT/api/v1/.

    Example: close-sync sim --port 8765 --api-key test_key --search-lag 2
    """
    from closecrm.sim.cli import run_from_cli

    run_from_cli(**kwargs)


if __name__ == "__main__":
    main()
