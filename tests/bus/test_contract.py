"""The bus contract, run against every backend (real servers for NATS and Redis)."""

from __future__ import annotations

import pytest

from microhive.bus import Bus
from tests.bus.contract import BusContract


class TestMemoryBus(BusContract):
    @pytest.fixture
    def url(self) -> str:
        return "memory://"

    @pytest.fixture
    async def other(self, bus: Bus) -> Bus:
        return bus  # one in-process bus: a second "connection" is the same object


class TestEmbeddedBus(BusContract):
    @pytest.fixture
    def url(self, embedded_bus_url: str) -> str:
        return embedded_bus_url


@pytest.mark.services
class TestNatsBus(BusContract):
    @pytest.fixture
    def url(self, nats_bus_url: str) -> str:
        return nats_bus_url


@pytest.mark.services
class TestRedisBus(BusContract):
    @pytest.fixture
    def url(self, redis_bus_url: str) -> str:
        return redis_bus_url
