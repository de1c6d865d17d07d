"""Real servers for integration tests: the Pub/Sub emulator, Apache Kafka and PostgreSQL.

Registered from tests/conftest.py. Apache Kafka is a single node in KRaft mode (broker and
controller in one JVM), run with `java` from the Maven Central jars that `make engines` copies into
.cache/engines/kafka (or the folder $CLOSE_SYNC_KAFKA_JARS names); nothing is downloaded at run time.
A test that needs a server whose binary (or, for Kafka, `java` or the jars) is missing is skipped,
unless CLOSE_SYNC_REQUIRE_SERVERS=1 (set by .ci/run), in which case it fails.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

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
    missing_server(f"{what} not available: {path_or_name} not found or not executable")


def missing_server(message: str) -> NoReturn:
    """Skip the test for want of a server, or fail it under CLOSE_SYNC_REQUIRE_SERVERS=1."""
    if os.environ.get("CLOSE_SYNC_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{message} (CLOSE_SYNC_REQUIRE_SERVERS=1)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: each stays bound until all are chosen."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


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


def stop_process_group(
    process: subprocess.Popen, first_signal: int = signal.SIGTERM, timeout_s: float = 10.0
) -> None:
    """Signal the server's whole process group, then SIGKILL what is left after timeout_s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, first_signal)
        process.wait(timeout=timeout_s)
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


# --- Kafka (Apache Kafka in KRaft mode, from Maven Central jars) ------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_JARS_ENV = "CLOSE_SYNC_KAFKA_JARS"  # a folder of the broker's jars, instead of the repo's cache
KAFKA_JARS_DEFAULT = REPO_ROOT / ".cache" / "engines" / "kafka"
# A small heap, the serial collector and only the quick JIT: the broker shares 2 cores with the tests
# and the DirectRunner, and serves them little traffic.
KAFKA_JVM_OPTS = [
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
]
KAFKA_STOP_TIMEOUT_S = 20.0
# Only warnings and errors, to stderr (the broker's log file): the INFO lines of a start are hundreds.
KAFKA_LOG4J2 = """\
status = warn
shutdownHook = disable
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = STDERR
"""


@dataclass(frozen=True)
class KafkaBroker:
    """A running Kafka broker; use the real confluent-kafka client against it."""

    bootstrap_servers: str

    def create_topic(self, topic: str, partitions: int = 1) -> str:
        """Create the topic and wait until the broker leads every partition of it."""
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        futures[topic].result(timeout=30)
        # The controller has the topic once the future is done; the broker learns of it (and of its
        # partitions' leader, itself) from the metadata log a moment later.
        deadline = time.monotonic() + 30
        while True:
            found = admin.list_topics(topic, timeout=10).topics.get(topic)
            if (
                found is not None
                and found.error is None
                and len(found.partitions) == partitions
                and all(p.leader >= 0 and p.error is None for p in found.partitions.values())
            ):
                return topic
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has no leader for every partition after 30s: {found}")
            time.sleep(0.05)

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


def kafka_jars() -> Path:
    """The folder of the broker's jars ($CLOSE_SYNC_KAFKA_JARS, else .cache/engines/kafka); skips the
    test when it holds no Kafka, or fails under CLOSE_SYNC_REQUIRE_SERVERS=1."""
    folder = Path(os.environ.get(KAFKA_JARS_ENV) or KAFKA_JARS_DEFAULT)
    if not list(folder.glob("kafka_2.13-*.jar")):
        missing_server(
            f"Apache Kafka jars not available: no kafka_2.13-*.jar in {folder} (run `make engines`)"
        )
    return folder


def kafka_cluster_id() -> str:
    """A random cluster id as Kafka writes one: 16 bytes, URL-safe base64 without padding, not
    starting with '-' (Kafka's own random ids avoid that, as it reads like a command-line flag)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def kafka_server_properties(log_dirs: Path, port: int, controller_port: int) -> str:
    """One node that is both the KRaft controller (a quorum of itself) and the broker."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        # Tests create their topics; a read of a missing topic must fail, never create it.
        "auto.create.topics.enable": "false",
        # A single node can hold only one replica of the internal topics.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # 2 cores: fewer threads than the defaults (3 network, 8 I/O).
        "num.network.threads": "2",
        "num.io.threads": "2",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def wait_for_kafka_metadata(
    bootstrap_servers: str, process: subprocess.Popen, log: Path, timeout_s: float
) -> None:
    """Block until the broker answers a metadata request that lists a broker; fail with its log otherwise."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Kafka exited with {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            if admin.list_topics(timeout=2).brokers:
                return
        except Exception as exc:  # noqa: BLE001 - not serving metadata yet
            last = exc
        time.sleep(0.2)
    stop_process_group(process)
    pytest.fail(
        f"Kafka answered no metadata request within {timeout_s}s ({last}):\n{log.read_text()[-4000:]}"
    )


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """Apache Kafka (KRaft, one node that is broker and controller) on free loopback ports, with fresh
    storage, from the jars `make engines` copies (≈3-4 s to format and start on 2 cores)."""
    with running_kafka(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@contextlib.contextmanager
def running_kafka(workdir: Path) -> Iterator[KafkaBroker]:
    """A Kafka broker with its storage and log under ``workdir`` (the fixture's, or a benchmark's)."""
    java = require_binary("java", "Java (runs the Kafka broker)")
    classpath = str(kafka_jars() / "*")
    port, controller_port = free_ports(2)
    properties = workdir / "server.properties"
    properties.write_text(kafka_server_properties(workdir / "data", port, controller_port))
    log4j2 = workdir / "log4j2.properties"
    log4j2.write_text(KAFKA_LOG4J2)
    jvm = [java, *KAFKA_JVM_OPTS, f"-Dlog4j2.configurationFile={log4j2}", "-cp", classpath]
    # --standalone: the controller quorum is this one node, written into the new metadata log.
    format_argv = [
        "kafka.tools.StorageTool",
        "format",
        "-t",
        kafka_cluster_id(),
        "-c",
        str(properties),
        "--standalone",
    ]
    formatted = subprocess.run(
        [*jvm, *format_argv], capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S, check=False
    )
    if formatted.returncode != 0:
        pytest.fail(
            f"kafka-storage format failed ({formatted.returncode}):\n{formatted.stdout}\n{formatted.stderr}"
        )
    log = workdir / "kafka.log"
    process = start_server([*jvm, "kafka.Kafka", str(properties)], log)
    try:
        wait_for_port("127.0.0.1", port, process, log, STARTUP_TIMEOUT_S)
        bootstrap_servers = f"127.0.0.1:{port}"
        wait_for_kafka_metadata(bootstrap_servers, process, log, STARTUP_TIMEOUT_S)
        yield KafkaBroker(bootstrap_servers=bootstrap_servers)
    finally:
        stop_process_group(process, timeout_s=KAFKA_STOP_TIMEOUT_S)


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
