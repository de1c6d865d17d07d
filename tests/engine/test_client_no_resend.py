"""The client's one reach into aiohttp's internals: its own resend of idempotent requests is off."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from closecrm.api.client import _no_blind_resend


def test_aiohttp_sessions_do_not_resend_a_request_by_themselves() -> None:
    async def go() -> bool:
        async with aiohttp.ClientSession() as session:
            _no_blind_resend(session)
            return session._retry_connection

    assert asyncio.run(go()) is False


def test_an_aiohttp_without_the_switch_is_refused_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    class Moved:
        pass

    with pytest.raises(RuntimeError, match="_retry_connection is gone"):
        _no_blind_resend(Moved())  # type: ignore[arg-type]
