"""What one attempt at a Close call came to, and what the client does next about it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Kind(Enum):
    OK = "ok"  # an answer below 400: its body is the result
    RATE_LIMITED = "rate_limited"  # a 429: the pacer holds the wait it asked for
    TRANSIENT = "transient"  # a 5xx, or no answer where sending again is safe
    AMBIGUOUS = "ambiguous"  # a write whose answer was lost: it may or may not have happened
    FATAL = "fatal"  # a 4xx: Close refused the call, sending it again changes nothing


@dataclass(frozen=True)
class AttemptResult:
    """One attempt, classified. ``error`` is what gets raised if the policy gives up on it."""

    kind: Kind
    body: Any = None
    error: Exception | None = None
    retry_after: float | None = None  # a 429's wait, as told (the pacer waits it out)
    reason: str = ""  # the status or the transport error's name, for the retry log


@dataclass(frozen=True)
class Done:
    body: Any


@dataclass(frozen=True)
class GiveUp:
    error: Exception


@dataclass(frozen=True)
class Backoff:
    """Send again after ``delay`` seconds: the attempt failed and counts as a retry."""

    delay: float


@dataclass(frozen=True)
class WaitOut:
    """Send again once the pacer has waited out the 429 (its next ticket does): no attempt used up."""

    retry_after: float | None


NextStep = Done | GiveUp | Backoff | WaitOut


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: 429s wait as told, up to ``max_rate_limited_waits``; transient failures back
    off exponentially with jitter, up to ``max_attempts`` in all; anything else ends the call."""

    max_attempts: int
    max_rate_limited_waits: int
    backoff_base: float
    backoff_max: float

    def decide(self, outcome: AttemptResult, attempt: int, rate_limited: int) -> NextStep:
        """``attempt``: this attempt's number, 429s not counted (1 for the first); ``rate_limited``:
        the 429s waited out before this one."""
        match outcome.kind:
            case Kind.OK:
                return Done(outcome.body)
            case Kind.RATE_LIMITED if rate_limited < self.max_rate_limited_waits:
                return WaitOut(outcome.retry_after)
            case Kind.TRANSIENT if attempt < self.max_attempts:
                return Backoff(self.backoff(attempt))
        assert outcome.error is not None, outcome
        return GiveUp(outcome.error)

    def backoff(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt``: exponential, capped, jittered down to half."""
        return min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
