"""How microhive errors become HTTP responses.

One table, walked along the exception's class hierarchy, so a new subclass of
(say) :class:`~microhive.errors.NotFound` answers 404 without being listed here.
Every error body has the same JSON shape, ``{"error": code, "message": text}``,
the shape :meth:`MicrohiveError.to_dict` gives.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from microhive.errors import (
    BudgetExhausted,
    Cancelled,
    ConfigError,
    Conflict,
    DeadlineExceeded,
    HopLimitExceeded,
    InvalidContext,
    InvalidInput,
    MicrohiveError,
    MissingDependency,
    NotFound,
    PayloadTooLarge,
    RuntimeFailure,
    ServiceUnavailable,
    Stop,
    SupervisorError,
    TimeoutFailure,
    UpstreamError,
    UsageError,
)

__all__ = ["error_response", "json_error", "status_for"]

#: HTTP status per error class; the most specific class in the MRO wins.
_STATUS: dict[type[MicrohiveError], int] = {
    MicrohiveError: 500,
    UsageError: 400,
    # A broken mesh file or a missing extra on the *server* is not the caller's fault.
    ConfigError: 500,
    MissingDependency: 500,
    InvalidInput: 400,
    InvalidContext: 400,
    PayloadTooLarge: 413,
    NotFound: 404,
    Stop: 503,
    HopLimitExceeded: 508,
    DeadlineExceeded: 504,
    BudgetExhausted: 429,
    Cancelled: 503,
    RuntimeFailure: 500,
    ServiceUnavailable: 503,
    TimeoutFailure: 504,
    Conflict: 409,
    SupervisorError: 500,
    UpstreamError: 502,
}


def status_for(exc: MicrohiveError) -> int:
    """The HTTP status that answers ``exc``."""
    for cls in type(exc).__mro__:
        status = _STATUS.get(cls)
        if status is not None:
            return status
    return 500


def json_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A JSON error response in the one shape every microhive service uses."""
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def error_response(exc: MicrohiveError) -> JSONResponse:
    """The JSON response for a microhive error raised while handling a request."""
    headers = {"retry-after": "1"} if isinstance(exc, ServiceUnavailable) else None
    return JSONResponse(exc.to_dict(), status_code=status_for(exc), headers=headers)
