"""The CLI as a new user runs it: the installed `close-sync` in a subprocess, against `close-sync sim`
started as its own process and seeded from examples/sim-seed.json, in a scratch working directory whose
temporary directory is private, so the files a command leaves behind can be listed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
CLOSE_SYNC = Path(sys.executable).parent / "close-sync"
SEED = REPO / "examples" / "sim-seed.json"
DEMO_CONFIG = REPO / "examples" / "demo-config.yaml"
SAMPLE_EVENTS = REPO / "examples" / "events.jsonl"
SIM_KEY = "cli_test_key_not_real"


@dataclass
class SimProcess:
    """`close-sync sim` in its own process, steered over HTTP through its admin routes."""

    proc: subprocess.Popen[str]
    base_url: str

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("api/v1/")

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, self.root + "_sim/" + path, json=body, auth=(SIM_KEY, ""), timeout=10)
        response.raise_for_status()
        return response.json()

    def fresh(self, *, rate_limits: bool = False, time_scale: float = 1.0) -> None:
        """Back to the seeded organisation: no leads, the demo's custom fields, stats at zero; the
        rate limits on or off, and every rate multiplied by ``time_scale``."""
        self._admin("POST", "reset")
        self._admin("PATCH", "config", {"limits_enabled": rate_limits, "time_scale": time_scale})
        self._admin("POST", "seed", json.loads(SEED.read_text()))

    def stats(self) -> dict[str, Any]:
        return self._admin("GET", "stats")

    def state(self) -> dict[str, Any]:
        return self._admin("GET", "state")

    def writes(self) -> int:
        groups = self.stats()["by_group"]
        return groups.get("lead_write", 0) + groups.get("contact_write", 0)


def start_sim(*extra: str) -> SimProcess:
    proc = subprocess.Popen(
        [str(CLOSE_SYNC), "sim", "--port", "0", "--api-key", SIM_KEY, "--seed", str(SEED), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    return SimProcess(proc, ready["base_url"])


def stop_sim(sim: SimProcess) -> None:
    sim.proc.send_signal(signal.SIGTERM)
    sim.proc.communicate(timeout=10)


@dataclass
class Workdir:
    """Where the user runs commands: cwd, HOME and TMPDIR of every command are under it."""

    path: Path

    @property
    def tmp(self) -> Path:
        return self.path / ".tmp"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(self.path / ".home"),
            "TMPDIR": str(self.tmp),
            "COLUMNS": "200",
            "PYTHONUNBUFFERED": "1",
            # The checkout under test, not whichever one the venv was installed from (a git worktree).
            "PYTHONPATH": str(REPO),
            **extra,
        }

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLOSE_SYNC), *args],
            cwd=self.path,
            env=self.env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def left_behind(self) -> list[str]:
        """What commands wrote in the work directory (not under its home or temp directory), relative to it."""
        return sorted(
            str(path.relative_to(self.path))
            for path in self.path.rglob("*")
            if path.relative_to(self.path).parts[0] not in (".home", ".tmp")
        )

    def temp_left(self) -> list[str]:
        """What commands left in their temporary directory."""
        return sorted(str(path.relative_to(self.tmp)) for path in self.tmp.rglob("*"))


def make_workdir(root: Path) -> Workdir:
    place = Workdir(root / "work")
    place.path.mkdir()
    place.tmp.mkdir()
    (place.path / ".home").mkdir()
    return place


def identify(n: int, companies: int | None = None, **traits: Any) -> dict[str, Any]:
    """User ``n``'s identify, in company ``c<n>`` (or ``c<n % companies>``, several users to a company)."""
    company = f"c{n if companies is None else n % companies}"
    return {
        "type": "identify",
        "messageId": f"m{n}",
        "userId": f"u{n}",
        "traits": {"name": f"User {n}", "email": f"user{n}@example.com", "company": {"id": company}, **traits},
    }


def sample_events(path: Path, lines: int) -> Path:
    """The first `lines` bundled sample events."""
    path.write_text("".join(SAMPLE_EVENTS.read_text().splitlines(keepends=True)[:lines]))
    return path


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str, status: int | None = None) -> str:
    """A non-zero exit (``status`` when given), exactly one error line on stderr, no traceback, and the
    words that say what to fix. The start line naming the state location is not part of the error."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    if status is not None:
        assert proc.returncode == status, proc.stderr
    lines = [
        line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("state location: ")
    ]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# A row of a rich table with three columns: stage, measure, count.
ROW = re.compile(r"^│ (\S[^│]*?)\s*│ (\S[^│]*?)\s*│\s*([\d,]+) │$")


def numbers(pattern: str, text: str) -> list[int]:
    """The groups of ``pattern``'s first match in ``text``, as integers (thousands separators allowed)."""
    found = re.search(pattern, text)
    assert found, (pattern, text[-2000:])
    return [int(n.replace(",", "")) for n in found.groups()]


def summary_rows(stdout: str) -> list[tuple[str, str, int]]:
    """(stage, measure, count) of each row of the run summary table in ``stdout``."""
    return [
        (m.group(1), m.group(2), int(m.group(3).replace(",", "")))
        for m in map(ROW.match, stdout.splitlines())
        if m
    ]
