"""The pieces every bus backend shares: value types, subjects, encoding, the backend seam.

A backend implements two small things (see :class:`Receipt` and :class:`Feed`):
storing a message durably, and handing out deliveries of stored messages to a
consumer with ack / nak-with-delay / term / touch. Everything above that --
call-context propagation, the hop limit, retries with backoff, dead letters,
concurrency -- lives once in :mod:`microhive.bus._bus`, so NATS, Redis, the
embedded log (and a Kafka backend one day) behave the same.
"""

from __future__ import annotations

import functools
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from microhive.errors import InvalidInput

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BACKOFF",
    "HEADER_MSG_ID",
    "ConsumerSpec",
    "Feed",
    "PublishAck",
    "Receipt",
    "Start",
    "encode_payload",
    "subject_matches",
    "validate_headers",
    "validate_msg_id",
    "validate_pattern",
    "validate_subject",
]

#: Header carrying the message id on every backend (NATS also gets ``Nats-Msg-Id``).
HEADER_MSG_ID = "microhive-msg-id"
CONTENT_TYPE = "content-type"
#: Delay before redelivery after the 1st, 2nd, ... failed attempt (the last repeats).
DEFAULT_BACKOFF: tuple[float, ...] = (0.5, 2.0, 10.0, 30.0)
MAX_PAYLOAD = 1024 * 1024

_TOKEN = re.compile(r"^[A-Za-z0-9_\-:$@#%+=]+$")
_MSG_ID = re.compile(r"^[^\s\x00-\x1f\x7f]{1,256}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


# ------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class PublishAck:
    """The backend stored the message: its position and whether it was a duplicate."""

    subject: str
    sequence: int
    msg_id: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Start:
    """Where a *new* consumer starts reading. An existing queue group keeps its place."""

    kind: Literal["beginning", "new", "sequence", "time"] = "new"
    sequence: int | None = None
    time: float | None = None

    @classmethod
    def beginning(cls) -> Start:
        return cls("beginning")

    @classmethod
    def new(cls) -> Start:
        return cls("new")

    @classmethod
    def at_sequence(cls, sequence: int) -> Start:
        if sequence < 1:
            raise InvalidInput(f"start sequence must be >= 1, got {sequence}")
        return cls("sequence", sequence=sequence)

    @classmethod
    def at_time(cls, unix_time: float) -> Start:
        return cls("time", time=unix_time)

    @classmethod
    def parse(cls, value: Start | str | int | float) -> Start:
        """Accept a Start, ``"beginning"``/``"new"``, a sequence (int) or a time (float)."""
        if isinstance(value, Start):
            return value
        if value in ("beginning", "all", "first"):
            return cls.beginning()
        if value == "new":
            return cls.new()
        if isinstance(value, bool):
            raise InvalidInput(f"start: expected beginning/new/sequence/time, got {value!r}")
        if isinstance(value, int):
            return cls.at_sequence(value)
        if isinstance(value, float):
            return cls.at_time(value)
        raise InvalidInput(
            f"start: expected 'beginning', 'new', a sequence or a time, got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """What a backend needs to open a feed: resolved by :meth:`Bus.subscribe`."""

    pattern: str
    name: str  # queue group name, or a unique name for a fan-out subscriber
    durable: bool  # True for a queue group (shared, survives restarts)
    start: Start
    ack_wait: float
    max_deliveries: int
    backoff: tuple[float, ...] = field(default=DEFAULT_BACKOFF)

    def delay_after(self, attempt: int) -> float:
        """The redelivery delay after failed attempt number ``attempt`` (1-based)."""
        if not self.backoff:
            return 0.0
        return self.backoff[min(attempt, len(self.backoff)) - 1]


# ----------------------------------------------------------- backend seam


class Receipt(ABC):
    """One delivery of a stored message, as a backend hands it out."""

    __slots__ = ("data", "deliveries", "headers", "msg_id", "published_at", "sequence", "subject")

    def __init__(
        self,
        *,
        subject: str,
        data: bytes,
        headers: Mapping[str, str],
        msg_id: str,
        sequence: int,
        deliveries: int,
        published_at: float,
    ) -> None:
        self.subject = subject
        self.data = data
        self.headers = dict(headers)
        self.msg_id = msg_id
        self.sequence = sequence
        self.deliveries = deliveries  # this is delivery number N (1 = first)
        self.published_at = published_at

    @abstractmethod
    async def ack(self) -> None:
        """Done: never deliver again to this consumer."""

    @abstractmethod
    async def nak(self, delay: float) -> None:
        """Failed: deliver again (to any member) after ``delay`` seconds."""

    @abstractmethod
    async def term(self) -> None:
        """Give up (the message was dead-lettered): never deliver again."""

    @abstractmethod
    async def touch(self) -> None:
        """Still working: extend the ack deadline."""


class Feed(ABC):
    """A consumer's source of deliveries, opened by a backend for one subscription."""

    @abstractmethod
    async def fetch(self, max_messages: int, max_wait: float) -> list[Receipt]:
        """Up to ``max_messages`` deliveries; empty when none came within ``max_wait`` s."""

    @abstractmethod
    async def aclose(self, *, delete: bool) -> None:
        """Stop; ``delete`` also removes the consumer's server-side state (fan-out)."""

    async def pending(self) -> tuple[int | None, int | None]:
        """The consumer's backlog: (not yet delivered, delivered but unsettled).

        One cheap query (for ``/metrics``); ``None`` for a figure the backend
        cannot tell. The default knows neither.
        """
        return None, None


# ---------------------------------------------------------------- subjects


def validate_subject(subject: object) -> str:
    """A concrete subject: dot-separated non-empty tokens, no wildcards."""
    if not isinstance(subject, str) or not subject:
        raise InvalidInput(f"subject: expected a non-empty string, got {subject!r}")
    if _subject_ok(subject):
        return subject
    bad = next(t for t in subject.split(".") if not _TOKEN.match(t))
    raise InvalidInput(
        f"subject {subject!r}: tokens must be non-empty and use letters, digits "
        f"or _-:$@#%+= (no spaces, no wildcards), got {bad!r}"
    )


@functools.lru_cache(maxsize=4096)
def _subject_ok(subject: str) -> bool:  # subjects repeat: check each once
    return len(subject) <= 1024 and all(_TOKEN.match(t) for t in subject.split("."))


def validate_pattern(pattern: object) -> str:
    """A subscription pattern: like a subject, plus ``*`` (one token) and ``>`` (the rest)."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidInput(f"pattern: expected a non-empty string, got {pattern!r}")
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if token == ">" and i != len(tokens) - 1:
            raise InvalidInput(f"pattern {pattern!r}: '>' may only be the last token")
        if token not in ("*", ">") and not _TOKEN.match(token):
            raise InvalidInput(f"pattern {pattern!r}: invalid token {token!r}")
    return pattern


@functools.lru_cache(maxsize=8192)
def subject_matches(pattern: str, subject: str) -> bool:
    """NATS-style matching: ``*`` matches one token, a final ``>`` one or more."""
    pt = pattern.split(".")
    st = subject.split(".")
    for i, p in enumerate(pt):
        if p == ">":
            return len(st) > i
        if i >= len(st) or (p != "*" and p != st[i]):
            return False
    return len(pt) == len(st)


# ---------------------------------------------------------------- encoding


def encode_payload(payload: object) -> tuple[bytes, str | None]:
    """Bytes pass through (no content type); str is UTF-8 text; else it must be JSON-able."""
    ctype: str | None
    if isinstance(payload, bytes | bytearray | memoryview):
        data, ctype = bytes(payload), None
    elif isinstance(payload, str):
        data, ctype = payload.encode(), "text/plain; charset=utf-8"
    else:
        try:
            data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"payload: expected bytes, str or a JSON-able value ({exc})"
            ) from None
        ctype = "application/json"
    if len(data) > MAX_PAYLOAD:
        raise InvalidInput(f"payload: {len(data)} bytes is over the {MAX_PAYLOAD}-byte limit")
    return data, ctype


def validate_headers(headers: Mapping[str, object] | None) -> dict[str, str]:
    """Lower-cased header names (token characters), string values without line breaks."""
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise InvalidInput(f"header name {name!r}: expected letters, digits and -_.")
        if not isinstance(value, str):
            raise InvalidInput(f"header {name!r}: expected a string value, got {value!r}")
        if "\r" in value or "\n" in value:
            raise InvalidInput(f"header {name!r}: the value must not contain line breaks")
        out[name.lower()] = value
    return out


def validate_msg_id(msg_id: object) -> str:
    if not isinstance(msg_id, str) or not _MSG_ID.match(msg_id):
        raise InvalidInput(
            f"msg_id: expected 1-256 printable characters without whitespace, got {msg_id!r}"
        )
    return msg_id


def check_backoff(backoff: Sequence[float] | None) -> tuple[float, ...]:
    if backoff is None:
        return DEFAULT_BACKOFF
    values = tuple(float(b) for b in backoff)
    if any(not 0 <= b <= 3600 for b in values):
        raise InvalidInput(f"backoff: expected delays between 0 and 3600 seconds, got {values}")
    return values
