"""Real servers for integration tests: the Pub/Sub emulator, a Kafka-protocol broker (noida-db) and PostgreSQL.

Registered from tests/conftest.py. A test that needs a server whose binary is missing is skipped,
unless CLOSE_SYNC_REQUIRE_SERVERS=1 (set by .ci/run), in which case it fails.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PUBSUB_EMULATOR_BIN = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
STARTUP_TIMEOUT_S = 60.0
# The emulator holds an empty Pull until its deadline; Beam's DirectRunner pulls with a 30 s deadline.
SHORT_PULL_TIMEOUT_S = 2.0


def require_binary(path_or_name: str, what: str) -> str:
    """The executable's path; skips the test when it is missing, or fails under CLOSE_SYNC_REQUIRE_SERVERS=1."""
    found = shutil.which(path_or_name)
    if found:
        return found
    message = f"{what} not available: {path_or_name} not found or not executable"
    if os.environ.get("CLOSE_SYNC_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{message} (CLOSE_SYNC_REQUIRE_SERVERS=1)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Block until host:port accepts connections; fail with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"server exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    stop_process_group(process)
    pytest.fail(f"server did not listen on {host}:{port} within {timeout_s}s:\n{log.read_text()[-4000:]}")


def start_server(argv: list[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    # A new session makes the server the leader of its own process group (the emulator's shell
    # script starts java as a child), so stopping it never touches pytest's group.
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )


def stop_process_group(process: subprocess.Popen, first_signal: int = signal.SIGTERM) -> None:
    """Signal the server's whole process group, then SIGKILL what is left after 10 s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, first_signal)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


# --- Pub/Sub emulator --------------------------------------------------------------------------


@dataclass(frozen=True)
class PubSubEmulator:
    """A running emulator; PUBSUB_EMULATOR_HOST points at it for the whole test session."""

    host: str  # host:port
    project: str

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, subscription: str) -> str:
        return f"projects/{self.project}/subscriptions/{subscription}"

    def create_topic(self, topic: str) -> str:
        from google.cloud import pubsub_v1

        path = self.topic_path(topic)
        pubsub_v1.PublisherClient().create_topic(name=path)
        return path

    def create_subscription(self, topic: str, subscription: str) -> str:
        from google.cloud import pubsub_v1

        path = self.subscription_path(subscription)
        with pubsub_v1.SubscriberClient() as subscriber:
            subscriber.create_subscription(name=path, topic=self.topic_path(topic))
        return path

    def publish(self, topic: str, payloads: Iterable[bytes], **attributes: str) -> list[str]:
        """Publish each payload (with the same attributes) and wait; returns the message ids."""
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        futures = [publisher.publish(self.topic_path(topic), data, **attributes) for data in payloads]
        return [future.result(timeout=30) for future in futures]


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator]:
    """The Pub/Sub emulator on a free port (≈5-10 s to start), with PUBSUB_EMULATOR_HOST set."""
    binary = require_binary(PUBSUB_EMULATOR_BIN, "Pub/Sub emulator")
    require_binary("java", "Java (runs the Pub/Sub emulator)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("pubsub-emulator")
    log = workdir / "emulator.log"
    process = start_server([binary, "--host=127.0.0.1", f"--port={port}"], log)
    try:
        wait_for_port("127.0.0.1", port, process, log, STARTUP_TIMEOUT_S)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
            patch.setenv("PUBSUB_PROJECT_ID", "close-sync-test")
            yield PubSubEmulator(host=f"127.0.0.1:{port}", project="close-sync-test")
    finally:
        stop_process_group(process)


@pytest.fixture
def pubsub_short_pulls(monkeypatch: pytest.MonkeyPatch) -> float:
    """Caps every SubscriberClient.pull deadline, so a streaming DirectRunner job polls and stops promptly.

    Beam's DirectRunner pulls with timeout=30 and the emulator answers an empty Pull only at the
    deadline; a cancelled job would otherwise keep a thread (and the emulator) busy for up to 30 s.
    """
    from google.cloud import pubsub_v1

    original = pubsub_v1.SubscriberClient.pull

    def pull(self: object, *args: object, timeout: float | None = None, **kwargs: object) -> object:
        timeout = SHORT_PULL_TIMEOUT_S if timeout is None else min(timeout, SHORT_PULL_TIMEOUT_S)
        return original(self, *args, timeout=timeout, **kwargs)

    monkeypatch.setattr(pubsub_v1.SubscriberClient, "pull", pull)
    return SHORT_PULL_TIMEOUT_S


# --- Kafka (noida-db) --------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaBroker:
    """A running Kafka-protocol broker; use the real confluent-kafka client against it."""

    bootstrap_servers: str

    def create_topic(self, topic: str, partitions: int = 1) -> str:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        futures[topic].result(timeout=30)
        return topic

    def produce(
        self, topic: str, values: Iterable[bytes | None], partition: int | None = None
    ) -> list[tuple[int, int]]:
        """Produce and flush; returns (partition, offset) of each message, in order."""
        from confluent_kafka import KafkaException, Producer

        producer = Producer({"bootstrap.servers": self.bootstrap_servers, "enable.idempotence": False})
        delivered: list[tuple[int, int]] = []
        errors: list[object] = []

        def on_delivery(error: object, message: object) -> None:
            if error is not None:
                errors.append(error)
            else:
                delivered.append((message.partition(), message.offset()))  # type: ignore[attr-defined]

        for value in values:
            kwargs = {} if partition is None else {"partition": partition}
            producer.produce(topic, value=value, on_delivery=on_delivery, **kwargs)
            producer.poll(0)
        if producer.flush(30) or errors:
            raise KafkaException(f"produce to {topic} failed: {errors or 'flush timed out'}")
        return delivered


def _noida_binary() -> str:
    beside_python = Path(sys.executable).with_name("noida-db")
    return require_binary(
        str(beside_python) if beside_python.exists() else "noida-db", "noida-db (Kafka broker)"
    )


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A noida-db Kafka broker on a free port with a fresh data dir (≈1 s to start)."""
    binary = _noida_binary()
    port = free_port()
    workdir = tmp_path_factory.mktemp("kafka")
    log = workdir / "noida.log"
    argv = [
        binary,
        "start",
        "--only",
        "kafka",
        "--kafka-port",
        str(port),
        "--data-dir",
        str(workdir / "data"),
    ]
    process = start_server(argv, log)
    try:
        wait_for_port("127.0.0.1", port, process, log, STARTUP_TIMEOUT_S)
        yield KafkaBroker(bootstrap_servers=f"127.0.0.1:{port}")
    finally:
        stop_process_group(process, first_signal=signal.SIGINT)


# --- PostgreSQL (Debian's packages) ------------------------------------------------------------

POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"
POSTGRES_OS_USER = "postgres"  # initdb and postgres refuse to run as root; Debian's package makes this user
POSTGRES_USER = "closesync"
POSTGRES_DB = "postgres"


@dataclass(frozen=True)
class PostgresServer:
    """A running PostgreSQL that asks for a password (scram-sha-256) on a loopback port."""

    host: str
    port: int
    user: str
    database: str
    password: str  # the superuser's; tests hand it over as $PGPASSWORD, never in a URL

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def connect(self):  # noqa: ANN201 - an ADBC DB-API connection
        from adbc_driver_postgresql import dbapi

        uri = f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"
        return dbapi.connect(uri, autocommit=True)

    def execute(self, *statements: str) -> None:
        with self.connect() as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def load(self, table: str, data, *, mode: str = "replace") -> None:  # noqa: ANN001 - a pyarrow Table
        """Write an Arrow table into ``table`` (replace: drop and create it)."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.adbc_ingest(table, data, mode=mode)


def postgres_bindir() -> str | None:
    """The newest Debian PostgreSQL's bin directory, else the one `pg_config` names, else None."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    found = sorted(glob.glob(POSTGRES_BIN_GLOB), key=version)
    for bindir in reversed(found):
        if os.access(os.path.join(bindir, "initdb"), os.X_OK):
            return bindir
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = out.stdout.strip()
        if out.returncode == 0 and os.access(os.path.join(bindir, "initdb"), os.X_OK):
            return bindir
    return None


def _as_postgres_user() -> tuple[list[str], tuple[int, int] | None]:
    """The argv prefix and (uid, gid) that run a command as the PostgreSQL system user when we are root."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root and there is no {POSTGRES_OS_USER!r} user to run PostgreSQL as "
            "(apt-get install -y postgresql creates it)"
        ) from None
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", POSTGRES_OS_USER, "--"], (user.pw_uid, user.pw_gid)


@contextlib.contextmanager
def running_postgres(bindir: str, timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[PostgresServer]:
    """initdb in a fresh temp dir, start a server on a free loopback port, stop it and remove it all.

    Outside pytest too (bench/warehouse_bench.py): failures raise RuntimeError with the server's log.
    """
    prefix, owner = _as_postgres_user()
    # Not under pytest's tmp dirs: those are root's, 0700, and the server runs as another user.
    root = Path(tempfile.mkdtemp(prefix="close-sync-pg-"))
    password = "pw-" + secrets.token_hex(12)
    process: subprocess.Popen | None = None
    try:
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        if owner:
            for path in (root, pwfile):
                os.chown(path, *owner)
        log = root / "postgres.log"
        init = subprocess.run(
            [
                *prefix,
                os.path.join(bindir, "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                POSTGRES_USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        pwfile.unlink()
        port = free_port()
        argv = [
            *prefix,
            os.path.join(bindir, "postgres"),
            "-D",
            str(root / "data"),
            "-p",
            str(port),
            "-k",
            str(root),
            "-c",
            "listen_addresses=127.0.0.1",
            # A throwaway server: durability only costs time here.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if owner:
            os.chown(log, *owner)
        server = PostgresServer("127.0.0.1", port, POSTGRES_USER, POSTGRES_DB, password)
        _wait_for_postgres(server, process, log, timeout_s)
        yield server
    finally:
        if process is not None:
            stop_process_group(process, first_signal=signal.SIGINT)  # SIGINT: fast shutdown
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_postgres(
    server: PostgresServer, process: subprocess.Popen, log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"postgres exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            )
        try:
            server.execute("SELECT 1")
            return
        except Exception as exc:  # noqa: BLE001 - not accepting connections yet
            last = exc
            time.sleep(0.2)
    stop_process_group(process, first_signal=signal.SIGINT)
    raise RuntimeError(
        f"postgres did not accept connections within {timeout_s}s ({last}):\n{log.read_text()[-4000:]}"
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (≈2 s to start); its password is only in the returned object."""
    bindir = postgres_bindir()
    require_binary(
        os.path.join(bindir, "initdb") if bindir else "initdb", "PostgreSQL (apt-get install -y postgresql)"
    )
    assert bindir is not None
    try:
        with running_postgres(bindir) as server:
            yield server
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
