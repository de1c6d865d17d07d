"""Where snapshot-sync reads a warehouse: the `--from URL`, and where its password is (never in the URL).

    duckdb:///FILE          a DuckDB database file (relative path; duckdb:////abs/path for an absolute one)
    duckdb://               DuckDB in memory: SQL over files with read_parquet()/read_csv()
    postgresql://USER@HOST:PORT/DB[?sslmode=...]
    bigquery://PROJECT      BigQuery (on Dataflow, through Beam's ReadFromBigQuery)

A URL that carries a secret is refused: a password in the user part (``user:pw@``), or a query
parameter that holds one (`SECRET_PARAMS`, and any name that says it is a password, secret, token
or credential, in every scheme). Runners print their options and logs print URLs, so the password
comes from an environment variable or a file, read where the connection is made (on the worker),
and other connection secrets from a libpq service file. `WarehouseURL` never holds one (and
`masked` leaves out any parameter that looks secret all the same); `Password` hides its value from
``str``/``repr`` and refuses to be pickled, as `closecrm.secret.ApiKey` does for the Close key.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass

from closecrm.storage import LOCAL_OBJECTS, ObjectStore, read_secret_file

DIALECTS = {"duckdb": "duckdb", "postgresql": "postgresql", "postgres": "postgresql", "bigquery": "bigquery"}
# libpq's own variable, so a shell set up for psql works unchanged.
DEFAULT_PASSWORD_ENV = {"postgresql": "PGPASSWORD"}
MASK = "***"

# libpq's connection parameters whose value is a secret: the password (and the spellings other
# drivers accept for it), the passphrase of the client key (sslpassword), the OAuth client secret,
# and sslkeylogfile, which writes the TLS session keys to a file. The others (sslkey, sslcert,
# sslrootcert, passfile, service…) name files or settings, not secrets.
PASSWORD_PARAMS = frozenset({"password", "passwd", "pwd"})
SECRET_PARAMS = PASSWORD_PARAMS | {"sslpassword", "oauth_client_secret", "sslkeylogfile"}
# Any scheme: a parameter whose name says it holds a secret (DuckDB's s3_secret_access_key…).
_SECRET_NAME = re.compile(r"password|passwd|passphrase|secret|token|credential|account_key|(^|[-_.])pwd($|[-_.])")

PASSWORD_FIX = (
    "put it in an environment variable ($PGPASSWORD, or the one --password-env / "
    "snapshot.source.password_env names) or a file (--password-file / snapshot.source.password_file)"
)


class WarehouseURLError(ValueError):
    """A `--from` URL that cannot be used; the message never repeats a password."""


class Password:
    """Holds a warehouse password; ``str()``/``repr()`` never show it. ``reveal()`` only to connect."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Password(****)"

    __str__ = __repr__

    def __reduce__(self):  # a DoFn carries a PasswordSource and reads the password on the worker
        raise TypeError("Password is not picklable; pass a PasswordSource and read it on the worker")


@dataclass(frozen=True)
class PasswordSource:
    """Where a worker reads the warehouse password: a file (any Beam filesystem), else an env var.

    Neither set, or the variable unset: no password (DuckDB, or a server that trusts the client).
    """

    env_var: str | None = None
    path: str | None = None
    objects: ObjectStore = LOCAL_OBJECTS  # how a password file at a URL is read

    def read(self) -> Password | None:
        if self.path:
            try:
                value = read_secret_file(self.path, self.objects).decode("utf-8").strip()
            except Exception as exc:  # noqa: BLE001 - any filesystem's error, reported without content
                raise WarehouseURLError(
                    f"cannot read the warehouse password file {self.path}: {type(exc).__name__}"
                ) from None
            if not value:
                raise WarehouseURLError(f"the warehouse password file {self.path} is empty")
            return Password(value)
        if self.env_var:
            value = os.environ.get(self.env_var, "")
            return Password(value) if value else None
        return None

    def describe(self) -> str:
        if self.path:
            return f"the file {self.path}"
        if self.env_var:
            return f"${self.env_var}"
        return "no password"


@dataclass(frozen=True)
class WarehouseURL:
    """A parsed `--from` URL, without a password (one in the URL is refused by `parse`)."""

    dialect: str  # duckdb | postgresql | bigquery
    user: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None  # postgres database, DuckDB file (None: in memory), BigQuery project
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, url: str, *, where: str = "--from") -> WarehouseURL:
        """Parse and check a URL; `WarehouseURLError` (without the URL's secret) when it cannot be used."""
        text = (url or "").strip()
        scheme, sep, rest = text.partition("://")
        dialect = DIALECTS.get(scheme.lower()) if sep else None
        if dialect is None:
            raise WarehouseURLError(
                f"{where}: expected duckdb:///FILE, duckdb://, postgresql://USER@HOST:PORT/DB or "
                f"bigquery://PROJECT, got a URL starting {scheme[:20]!r}"
            )
        parts = urllib.parse.urlsplit(text)
        params = tuple(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        secret = secret_params(params)
        if ":" in _userinfo(parts.netloc) or (secret and all(n.strip().lower() in PASSWORD_PARAMS for n in secret)):
            raise WarehouseURLError(
                f"{where}: the URL holds a password, and URLs are shown by runners and logs; remove it "
                f"from the URL and {PASSWORD_FIX}"
            )
        if secret:
            names = ", ".join(name[:40] for name in secret)
            raise WarehouseURLError(
                f"{where}: the URL's {names} parameter holds a secret, and URLs are shown by runners "
                f"and logs; remove it from the URL and {_secret_fix(dialect)}"
            )
        if dialect == "duckdb":
            return cls._duckdb(parts, rest, params, where)
        if dialect == "bigquery":
            project = parts.netloc
            if not project or parts.path.strip("/") or params:
                raise WarehouseURLError(
                    f"{where}: expected bigquery://PROJECT (the project that runs the reads)"
                )
            return cls("bigquery", database=project)
        try:
            port = parts.port
        except ValueError:
            raise WarehouseURLError(f"{where}: the port is not a number") from None
        database = urllib.parse.unquote(parts.path.lstrip("/")) or None
        if not parts.hostname:
            raise WarehouseURLError(f"{where}: expected postgresql://USER@HOST:PORT/DB (no host given)")
        user = urllib.parse.unquote(parts.username) if parts.username else None
        return cls("postgresql", user, parts.hostname, port, database, params)

    @classmethod
    def _duckdb(cls, parts: urllib.parse.SplitResult, rest: str, params: tuple, where: str) -> WarehouseURL:
        if parts.netloc:
            raise WarehouseURLError(
                f"{where}: expected duckdb:///FILE (three slashes; four for an absolute path) or duckdb://"
            )
        path = rest.split("?", 1)[0]
        path = urllib.parse.unquote(path[1:] if path.startswith("/") else path)
        if path in ("", ":memory:"):
            path = None
        return cls("duckdb", database=path, params=params)

    def masked(self) -> str:
        """The URL as it may be printed (there is never a password in it; `***` if there were)."""
        if self.dialect == "duckdb":
            return f"duckdb:///{self.database}" if self.database else "duckdb://"
        if self.dialect == "bigquery":
            return f"bigquery://{self.database}"
        return self._postgres(None, masked=True)

    def connect_uri(self, password: Password | None) -> str:
        """The libpq URI with the password in it: for the driver only, never to be shown."""
        return self._postgres(password)

    def _postgres(self, password: Password | None, *, masked: bool = False) -> str:
        user = urllib.parse.quote(self.user or "", safe="")
        if password:
            user += ":" + urllib.parse.quote(password.reveal(), safe="")
        host = self.host or ""
        if ":" in host:  # IPv6
            host = f"[{host}]"
        netloc = f"{user}@{host}" if user else host
        if self.port:
            netloc += f":{self.port}"
        params = [(k, v) for k, v in self.params if not (masked and is_secret_param(k))]
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return f"postgresql://{netloc}/{urllib.parse.quote(self.database or '')}{query}"

    def default_password_env(self) -> str | None:
        return DEFAULT_PASSWORD_ENV.get(self.dialect)

    def __str__(self) -> str:
        return self.masked()


def is_secret_param(name: str) -> bool:
    """True for a URL query parameter whose value is a secret (see `SECRET_PARAMS`)."""
    key = name.strip().lower()
    return key in SECRET_PARAMS or bool(_SECRET_NAME.search(key))


def secret_params(params: tuple[tuple[str, str], ...]) -> list[str]:
    """The names (never the values) of the parameters that hold a secret, each once."""
    return list(dict.fromkeys(name for name, _ in params if is_secret_param(name)))


def _secret_fix(dialect: str) -> str:
    if dialect == "postgresql":
        return "put it in a libpq service file ($PGSERVICEFILE) and name the service with ?service=NAME"
    return "set it up in the database's own configuration (a DuckDB secret, say)"


def _userinfo(netloc: str) -> str:
    return netloc.rpartition("@")[0] if "@" in netloc else ""


def _has_password(netloc: str, params: tuple[tuple[str, str], ...]) -> bool:
    return ":" in _userinfo(netloc) or bool(secret_params(params))


def looks_like_url_with_password(text: str) -> bool:
    """True when ``text`` is a URL whose user part or query carries a secret (for argument checks)."""
    if "://" not in text:
        return False
    try:
        parts = urllib.parse.urlsplit(text.strip())
    except ValueError:
        return False
    return _has_password(parts.netloc, tuple(urllib.parse.parse_qsl(parts.query)))


def scrub(text: str, password: Password | None) -> str:
    """``text`` with every spelling of the password (as is, URL-quoted) replaced by `MASK`."""
    if not password:
        return text
    secret = password.reveal()
    for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}:
        if form:
            text = text.replace(form, MASK)
    return text
