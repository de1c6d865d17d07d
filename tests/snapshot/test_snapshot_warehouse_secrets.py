"""The warehouse password never leaks: not in a log line, an error, the state, a dead letter or a pipeline option.

It comes from an environment variable or a file and is read where the connection is made; a URL
or a flag that carries one is refused before anything runs, without echoing it.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import yaml
from apache_beam.internal.cloudpickle import cloudpickle
from click.testing import CliRunner

from closecrm.reverse_etl.warehouse import ReadPlan, driver_detail
from closecrm.reverse_etl.warehouse_url import Password, PasswordSource, WarehouseURL, scrub
from pipeline import snapshot_job
from pipeline.cli import main
from pipeline.config import ConfigError, parse_config
from pipeline.runjob import start as real_start
from pipeline.snapshot_state import SnapshotState
from tests.servers import free_port
from transforms.warehouse import ReadWarehouseSlices

from .helpers import rows, snapshot_config, source, write_postgres

pytestmark = pytest.mark.integration


def _files_hold(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_the_password_never_leaks(sim, postgres, tmp_path: Path, monkeypatch, caplog) -> None:
    secret = postgres.password
    # A named variable, not $PGPASSWORD: the job must read the one it is told to.
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("WAREHOUSE_PASSWORD", secret)
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    table = rows(6)
    table[2]["user_id"] = None  # dead-lettered: a row without a key
    url = write_postgres(postgres, "secret_users", table)
    config = snapshot_config(sim, tmp_path)
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))

    seen_options: list[str] = []

    def recording_start(options, streaming, graph):  # noqa: ANN001, ANN202
        seen_options.append(repr(options.get_all_options(drop_default=False)))
        return real_start(options, streaming, graph)

    monkeypatch.setattr(snapshot_job, "start", recording_start)
    caplog.set_level(logging.DEBUG)
    args = [
        "snapshot-sync",
        "--config",
        str(path),
        "--state",
        str(tmp_path / "state"),
        "--close-url",
        sim.base_url,
        "--dead-letter",
        str(tmp_path / "dead"),
        "--from",
        url,
        "--table",
        "secret_users",
        "--password-env",
        "WAREHOUSE_PASSWORD",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0  # the null-key row is reported as a failure …
    assert len(sim.contacts()) == 5  # … and the others were read with the password
    assert seen_options and not any(secret in options for options in seen_options)
    assert secret not in result.output and secret not in caplog.text
    assert list((tmp_path / "dead").rglob("*.jsonl")), "expected a dead letter"
    assert _files_hold(tmp_path / "dead", secret) == [] and _files_hold(tmp_path / "state", secret) == []
    manifest = SnapshotState(str(tmp_path / "state")).current().manifest  # type: ignore[union-attr]
    assert manifest["source"]["url"] == postgres.url  # the URL as given: it never holds a password

    # Errors: a server that is not there, and a driver message that echoes the connection string.
    dead_url = f"postgresql://{postgres.user}@127.0.0.1:{free_port()}/postgres"
    result = CliRunner().invoke(
        main, [*args[:-6], "--from", dead_url, "--table", "t", "--password-env", "WAREHOUSE_PASSWORD"]
    )
    assert result.exit_code != 0 and "cannot connect" in result.output and secret not in result.output
    echoed = f"could not connect to postgresql://closesync:{secret}@db/x\nQuery was: SELECT 1"
    assert secret not in driver_detail(echoed, Password(secret)) and "***" in driver_detail(
        echoed, Password(secret)
    )


def test_the_password_is_not_in_the_graph(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGPASSWORD", "pw-in-the-environment-only")
    src = source("postgresql://sync@db.example:5432/analytics", table="users")
    plan = ReadPlan(src, ("user_id", "email"), 1, slices=4, batch_rows=1000)
    for blob in (pickle.dumps(plan), cloudpickle.dumps(ReadWarehouseSlices(plan))):
        assert b"pw-in-the-environment-only" not in blob
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(Password("pw-in-the-environment-only"))
    assert "pw-in" not in repr(Password("pw-in-the-environment-only")) + str(Password("x"))
    file = tmp_path / "pw"
    file.write_text("from-a-file\n")
    assert PasswordSource(path=str(file)).read().reveal() == "from-a-file"  # type: ignore[union-attr]
    assert PasswordSource(env_var="PGPASSWORD").read().reveal() == "pw-in-the-environment-only"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://sync:hunter2-secret@db:5432/analytics",
        "postgres://sync:hunter2-secret@db/analytics",
        "postgresql://sync@db/analytics?password=hunter2-secret",
    ],
)
def test_a_url_with_a_password_is_refused_without_echoing_it(url: str, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({"snapshot": {"primary_key": ["id"], "fields": {"contact_email": "email"}}})
    )
    result = CliRunner().invoke(
        main,
        [
            "snapshot-sync",
            "--config",
            str(config),
            "--state",
            str(tmp_path / "s"),
            "--from",
            url,
            "--table",
            "t",
        ],
    )
    assert result.exit_code != 0 and "holds a password" in result.output
    assert "hunter2" not in result.output
    with pytest.raises(ConfigError) as refused:
        parse_config({"snapshot": {"primary_key": ["id"], "source": {"url": url, "table": "t"}}})
    assert "holds a password" in str(refused.value) and "hunter2" not in str(refused.value)
    assert not (tmp_path / "s").exists()


def test_password_flags_are_refused_and_pointer_flags_are_not(tmp_path: Path) -> None:
    base = ["snapshot-sync", "--config", str(tmp_path / "none.yaml"), "--state", str(tmp_path / "s")]
    for flag in ("--password", "--pg-password", "--warehouse_password=x"):
        result = CliRunner().invoke(main, [*base, flag, "hunter2-secret"])
        assert result.exit_code == 2 and "looks like it carries a secret" in result.output
        assert "hunter2" not in result.output
    for flag in ("--password-env", "--password-file"):
        result = CliRunner().invoke(main, [*base, flag, "X"])
        assert "looks like it carries a secret" not in result.output


def test_masked_urls_and_scrubbed_messages() -> None:
    url = WarehouseURL.parse("postgresql://sync@db.example:6543/analytics?sslmode=require")
    assert url.masked() == "postgresql://sync@db.example:6543/analytics?sslmode=require"
    uri = url.connect_uri(Password("p@ss word/1"))
    assert "p%40ss%20word%2F1" in uri and "p@ss" not in url.masked()
    assert (
        scrub(f"failed: {uri}", Password("p@ss word/1"))
        == f"failed: {uri.replace('p%40ss%20word%2F1', '***')}"
    )


def test_a_url_with_a_secret_parameter_is_refused_and_never_printed_or_stored(
    sim, postgres, tmp_path: Path, monkeypatch
) -> None:
    """libpq takes the client key's passphrase as ?sslpassword=: a real server runs with it, so only
    the refusal keeps it out of the summary's header and the state's manifest."""
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    url = write_postgres(postgres, "passphrase_users", rows(3))
    config = snapshot_config(sim, tmp_path)
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    state = tmp_path / "state"
    args = ["snapshot-sync", "--config", str(path), "--state", str(state), "--close-url", sim.base_url]
    secret = "hunter2-passphrase"
    result = CliRunner().invoke(
        main, [*args, "--from", f"{url}?sslmode=disable&sslpassword={secret}", "--table", "passphrase_users"]
    )
    assert result.exit_code == 2, result.output
    assert "sslpassword parameter holds a secret" in result.output and "service" in result.output
    assert secret not in result.output
    assert not state.exists() and sim.contacts() == []

    # The same table with a parameter that is no secret: the header and the manifest show the URL.
    allowed = f"{url}?sslmode=disable&application_name=close-sync-test"
    result = CliRunner().invoke(main, [*args, "--from", allowed, "--table", "passphrase_users"])
    assert result.exit_code == 0, result.output
    assert "application_name=close-sync-test" in result.output
    manifest = SnapshotState(str(state)).current().manifest  # type: ignore[union-attr]
    assert manifest["source"]["url"] == allowed and manifest["input"] == f"{allowed} table passphrase_users"
    assert _files_hold(state, postgres.password) == []


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgresql://sync@db/analytics?sslmode=verify-full&sslpassword=hunter2-secret", "sslpassword"),
        ("postgresql://sync@db/analytics?SSLPassword=hunter2-secret", "SSLPassword"),
        ("postgresql://sync@db/analytics?%73slpassword=hunter2-secret", "sslpassword"),  # quoted name
        ("postgres://sync@db/analytics?oauth_client_secret=hunter2-secret", "oauth_client_secret"),
        ("postgresql://sync@db/analytics?sslkeylogfile=/tmp/hunter2-secret", "sslkeylogfile"),
        ("duckdb:///wh.duckdb?s3_secret_access_key=hunter2-secret", "s3_secret_access_key"),
        ("duckdb://?s3_session_token=hunter2-secret", "s3_session_token"),
        ("bigquery://my-project?access_token=hunter2-secret", "access_token"),
    ],
)
def test_every_secret_parameter_is_refused_by_name_without_its_value(
    url: str, named: str, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({"snapshot": {"primary_key": ["id"], "fields": {"contact_email": "email"}}})
    )
    args = ["snapshot-sync", "--config", str(config), "--state", str(tmp_path / "s"), "--table", "t"]
    result = CliRunner().invoke(main, [*args, "--from", url])
    assert result.exit_code == 2, result.output
    assert f"{named} parameter holds a secret" in result.output and "hunter2" not in result.output
    with pytest.raises(ConfigError) as refused:
        parse_config({"snapshot": {"primary_key": ["id"], "source": {"url": url, "table": "t"}}})
    assert "holds a secret" in str(refused.value) and "hunter2" not in str(refused.value)
    assert not (tmp_path / "s").exists()


def test_files_and_settings_that_are_no_secrets_are_kept_and_secrets_are_never_masked_in() -> None:
    url = "postgresql://sync@db/analytics?sslmode=verify-full&sslkey=/keys/client.key&sslcert=/keys/c.crt&service=wh"
    parsed = WarehouseURL.parse(url)
    assert WarehouseURL.parse(parsed.masked()).params == parsed.params and len(parsed.params) == 4
    built = WarehouseURL(
        "postgresql", "sync", "db", None, "analytics", (("sslmode", "require"), ("sslpassword", "hunter2"))
    )
    assert built.masked() == "postgresql://sync@db/analytics?sslmode=require"
    assert "hunter2" in built.connect_uri(None)  # the driver still gets what it was given
