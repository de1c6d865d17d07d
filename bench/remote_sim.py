"""The Close simulator in its own process, for benchmarks: as Close is to a real job, it does not share
the job's CPU and GIL (``closesim.SimServer`` runs it in a thread of the caller instead)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


class RemoteSim:
    """``close-sync sim`` in a subprocess, with the part of ``SimServer``'s interface the benches use."""

    def __init__(self, time_scale: float, api_key: str, rate_groups: str = "close") -> None:
        self.api_key = api_key
        cmd = [sys.executable, "-m", "pipeline.cli", "sim", "--port", "0", "--api-key", self.api_key,
               "--time-scale", str(time_scale), "--rate-groups", rate_groups]  # fmt: skip
        self._proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self._proc.stdout is not None
        self.base_url = json.loads(self._proc.stdout.readline())["base_url"]
        self._admin = self.base_url.split("/api/v1/")[0] + "/_sim/"
        self._auth = (self.api_key, "")  # the admin routes take the API key too

    @property
    def pid(self) -> int:
        return self._proc.pid

    def configure(self, **knobs: Any) -> None:
        """As ``SimServer.configure``: the simulator's knobs (faults, storms, seed) through its admin route."""
        httpx.patch(self._admin + "config", json=knobs, auth=self._auth, timeout=30).raise_for_status()

    def create_custom_field(self, object_type: str, name: str) -> str:
        url = f"{self.base_url}custom_field/{object_type}/"
        return httpx.post(url, json={"name": name, "type": "text"}, auth=(self.api_key, "")).json()["id"]

    def stats(self) -> dict[str, Any]:
        return httpx.get(self._admin + "stats", auth=self._auth, timeout=30).json()

    def leads(self) -> list[dict[str, Any]]:
        return httpx.get(self._admin + "state", auth=self._auth, timeout=300).json()["leads"]

    def contacts(self) -> list[dict[str, Any]]:
        return [c for lead in self.leads() for c in lead.get("contacts") or []]

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
