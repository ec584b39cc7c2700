"""Fault isolation for calls to one upstream: timeout, retries, circuit breaker, concurrency.

One :class:`Guard` wraps every call the gateway makes to one upstream tool
service, so a crashed or hanging service costs its callers a quick, clear error
and nothing else:

* **timeout** -- the whole call (waiting for a concurrency slot included) must
  finish within ``policy.timeout`` or the caller's deadline, whichever is sooner;
* **retries** with full-jitter exponential backoff, only when the tool is marked
  read-only or idempotent (retrying a payment is how you pay twice);
* **circuit breaker** -- after ``failure_threshold`` consecutive failures the
  breaker opens and calls fail at once for ``cooldown`` seconds; then one call is
  let through as a probe (half-open): success closes the breaker, failure opens
  it again for another cool-down;
* **concurrency limit** -- at most ``max_concurrency`` calls in flight; extra
  callers wait for a slot, within their timeout.

Only runtime failures (:class:`~microhive.errors.RuntimeFailure`: unreachable,
timed out, protocol errors) count against the breaker. A tool that answers with
a tool error (``isError``) has *answered*; that is the tool's business, not a
fault of the upstream.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from microhive.errors import RuntimeFailure, ServiceUnavailable, TimeoutFailure

__all__ = ["BreakerState", "CircuitBreaker", "Guard", "ResiliencePolicy"]

T = TypeVar("T")


@dataclass(frozen=True)
class ResiliencePolicy:
    """The knobs of one upstream's guard (gateway setting ``resilience``)."""

    timeout: float = 30.0
    retries: int = 2
    backoff_base: float = 0.05
    backoff_max: float = 1.0
    failure_threshold: int = 5
    cooldown: float = 5.0
    max_concurrency: int = 64

    @classmethod
    def from_settings(cls, raw: dict[str, Any] | None) -> ResiliencePolicy:
        """Build from a settings mapping, naming any unknown or invalid key."""
        if not raw:
            return cls()
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            from microhive.errors import ConfigError

            raise ConfigError(
                f"unknown resilience setting(s) {unknown}; expected some of {sorted(known)}"
            )
        policy = cls(**raw)
        policy.validate()
        return policy

    def validate(self) -> None:
        from microhive.errors import ConfigError

        if self.timeout <= 0 or self.cooldown < 0 or self.backoff_base < 0:
            raise ConfigError("resilience: timeout must be > 0, cooldown and backoff >= 0")
        if self.retries < 0 or self.failure_threshold < 1 or self.max_concurrency < 1:
            raise ConfigError(
                "resilience: retries >= 0, failure_threshold >= 1, max_concurrency >= 1"
            )


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Counts consecutive failures; opens, cools down, and probes with one call."""

    def __init__(
        self,
        failure_threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def acquire(self, name: str) -> bool:
        """Admit a call or raise :class:`ServiceUnavailable`; True if it is the probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return False
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._state = BreakerState.HALF_OPEN
            self._probing = True
            return True
        wait = max(0.0, self.cooldown - (self._clock() - self._opened_at))
        raise ServiceUnavailable(
            f"{name} is unavailable: circuit breaker open after {self._failures} consecutive "
            f"failures (next probe in {wait:.1f}s)"
        )

    def success(self, probe: bool) -> None:
        self._failures = 0
        self._state = BreakerState.CLOSED
        if probe:
            self._probing = False

    def failure(self, probe: bool) -> None:
        self._failures += 1
        if probe:
            self._probing = False
        if probe or self._failures >= self.failure_threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    def release(self, probe: bool) -> None:
        """The probe ended without a verdict (cancelled): let another call probe."""
        if probe:
            self._probing = False


class Guard:
    """Timeout, retries, breaker and concurrency limit around calls to one upstream."""

    def __init__(self, name: str, policy: ResiliencePolicy | None = None) -> None:
        self.name = name
        self.policy = policy or ResiliencePolicy()
        self.breaker = CircuitBreaker(self.policy.failure_threshold, self.policy.cooldown)
        self._slots = anyio.Semaphore(self.policy.max_concurrency)
        self.in_flight = 0

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        retryable: bool,
        deadline: float | None = None,
    ) -> T:
        """Run ``call`` under the policy; ``deadline`` is absolute Unix time (or None).

        Raises :class:`ServiceUnavailable` (breaker open / unreachable),
        :class:`TimeoutFailure` (no answer in time) or another
        :class:`RuntimeFailure` from ``call``.
        """
        attempts = 1 + (self.policy.retries if retryable else 0)
        give_up_at = time.monotonic() + self.policy.timeout
        if deadline is not None:
            give_up_at = min(give_up_at, time.monotonic() + (deadline - time.time()))
        last: RuntimeFailure | None = None
        for attempt in range(attempts):
            if attempt:
                delay = random.uniform(
                    0, min(self.policy.backoff_max, self.policy.backoff_base * 2**attempt)
                )
                if time.monotonic() + delay >= give_up_at:
                    break
                await anyio.sleep(delay)
            try:
                return await self._once(call, give_up_at)
            except ServiceUnavailable as exc:
                last = exc
                if self.breaker.state is not BreakerState.CLOSED:
                    break  # the breaker says stop; retrying would only hammer it
            except TimeoutFailure as exc:
                last = exc
                break  # the time is spent; a retry would be late by definition
            except RuntimeFailure as exc:
                last = exc
        assert last is not None
        raise last

    async def _once(self, call: Callable[[], Awaitable[T]], give_up_at: float) -> T:
        probe = self.breaker.acquire(self.name)
        verdict: bool | None = None
        try:
            remaining = give_up_at - time.monotonic()
            if remaining <= 0:
                verdict = None
                raise TimeoutFailure(f"{self.name}: no time left for the call")
            try:
                with anyio.fail_after(remaining):
                    async with self._slots:
                        self.in_flight += 1
                        try:
                            result = await call()
                        finally:
                            self.in_flight -= 1
            except TimeoutError:
                verdict = False
                raise TimeoutFailure(
                    f"{self.name} did not answer within {remaining:.2f}s"
                ) from None
            except RuntimeFailure:
                verdict = False
                raise
            verdict = True
            return result
        finally:
            if verdict is True:
                self.breaker.success(probe)
            elif verdict is False:
                self.breaker.failure(probe)
            else:
                self.breaker.release(probe)

    def snapshot(self) -> dict[str, Any]:
        """Breaker and load figures for the catalogue and /admin."""
        return {
            "breaker": self.breaker.state.value,
            "consecutive_failures": self.breaker.failures,
            "in_flight": self.in_flight,
        }
