"""The guard's policy: retries only when safe, breaker open/half-open/closed, concurrency."""

from __future__ import annotations

import anyio
import pytest

from microhive.errors import ConfigError, ServiceUnavailable, TimeoutFailure, UpstreamError
from microhive.mcp.resilience import BreakerState, CircuitBreaker, Guard, ResiliencePolicy


class Flaky:
    """Fails ``failures`` times with ``error``, then answers 'ok'."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


async def test_retries_only_retryable_calls() -> None:
    policy = ResiliencePolicy(retries=2, backoff_base=0.001, failure_threshold=10)
    safe = Flaky(2, UpstreamError("boom"))
    assert await Guard("up", policy).run(safe, retryable=True) == "ok"
    assert safe.calls == 3
    unsafe = Flaky(1, UpstreamError("boom"))
    with pytest.raises(UpstreamError):
        await Guard("up", policy).run(unsafe, retryable=False)
    assert unsafe.calls == 1


async def test_breaker_opens_fails_fast_and_probes_after_cooldown() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, cooldown=10, clock=lambda: now[0])
    guard = Guard("up", ResiliencePolicy(retries=0, failure_threshold=2))
    guard.breaker = breaker
    down = Flaky(100, ServiceUnavailable("down"))
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await guard.run(down, retryable=False)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(ServiceUnavailable, match="circuit breaker open"):
        await guard.run(down, retryable=False)
    assert down.calls == 2  # failed fast: the upstream was not called
    now[0] = 11.0
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(ServiceUnavailable):  # the probe fails: open again
        await guard.run(down, retryable=False)
    assert down.calls == 3 and breaker.state is BreakerState.OPEN
    now[0] = 22.0
    up = Flaky(0, UpstreamError("never"))
    assert await guard.run(up, retryable=False) == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_only_one_probe_while_half_open() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1, clock=lambda: now[0])
    breaker.failure(probe=False)
    now[0] = 2.0
    assert breaker.acquire("up") is True
    with pytest.raises(ServiceUnavailable):
        breaker.acquire("up")
    breaker.success(probe=True)
    assert breaker.acquire("up") is False


async def test_concurrency_limit_and_timeout() -> None:
    guard = Guard("up", ResiliencePolicy(max_concurrency=2, timeout=0.3, retries=0))
    running = 0
    peak = 0
    release = anyio.Event()

    async def held() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
        finally:
            running -= 1
        return "ok"

    outcomes: list[str] = []

    async def one() -> None:
        try:
            outcomes.append(await guard.run(held, retryable=False))
        except TimeoutFailure:
            outcomes.append("timeout")

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)
    assert peak == 2
    assert outcomes == ["timeout"] * 4


def test_policy_from_settings_names_bad_keys() -> None:
    assert ResiliencePolicy.from_settings({"timeout": 2}).timeout == 2
    with pytest.raises(ConfigError, match="tiemout"):
        ResiliencePolicy.from_settings({"tiemout": 2})
    with pytest.raises(ConfigError):
        ResiliencePolicy.from_settings({"retries": -1})
