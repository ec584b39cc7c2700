"""Every error microhive raises, in one hierarchy.

Catch :class:`MicrohiveError` to catch anything of ours. The three families below
it answer three different questions, so callers can treat them differently:

* :class:`UsageError` -- *the developer or operator got something wrong*: a bad
  mesh file, an unknown service name, a missing optional dependency, malformed
  input at a public entry point. Retrying the same thing fails the same way; the
  message says what to change.
* :class:`Stop` -- *control flow, not a failure*: a request ran out of hops, time
  or budget, or was cancelled. These end work on purpose (a loop stops itself) and
  are recorded on the trace as such.
* :class:`RuntimeFailure` -- *something at run time failed*: a dependency is down,
  timed out, or answered with an error. Third-party exceptions (httpx, nats,
  redis, the MCP SDK, ...) are converted to one of these at the boundary where we
  call the library, keeping the original as ``__cause__``.

::

    MicrohiveError
    |-- UsageError
    |   |-- ConfigError              mesh file: file, line, field, what was expected
    |   |-- MissingDependency        optional extra not installed (with install hint)
    |   |-- InvalidInput             malformed request / header / payload at an entry point
    |   |   |-- InvalidContext       a call-context carrier could not be decoded
    |   |   |-- PayloadTooLarge      a request body is over the service's size limit
    |   |   `-- TargetRefused        an outbound URL points at a refused address (SSRF policy)
    |   `-- NotFound                 unknown service, run, file, ...
    |-- Stop
    |   |-- HopLimitExceeded         hop count reached zero
    |   |-- DeadlineExceeded         the absolute deadline has passed
    |   |-- BudgetExhausted          step or token budget used up
    |   `-- Cancelled                cancelled by a user or by shutdown
    `-- RuntimeFailure
        |-- ServiceUnavailable       a dependency could not be reached / not ready
        |-- TimeoutFailure           a dependency did not answer in time
        |-- Conflict                 a precondition (version, state) did not hold
        |-- SupervisorError          a mesh process could not be started or kept up
        `-- UpstreamError            a dependency answered with an error
"""

from __future__ import annotations

__all__ = [
    "BudgetExhausted",
    "Cancelled",
    "ConfigError",
    "Conflict",
    "DeadlineExceeded",
    "HopLimitExceeded",
    "InvalidContext",
    "InvalidInput",
    "MicrohiveError",
    "MissingDependency",
    "NotFound",
    "PayloadTooLarge",
    "RuntimeFailure",
    "ServiceUnavailable",
    "Stop",
    "SupervisorError",
    "TargetRefused",
    "TimeoutFailure",
    "UpstreamError",
    "UsageError",
]


class MicrohiveError(Exception):
    """Base class of every error raised by microhive.

    ``code`` is a short stable identifier (used in HTTP/MCP error bodies and on
    trace events); ``message`` is for people.
    """

    code: str = "microhive_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        """A JSON-safe description, as put in HTTP error bodies and events."""
        return {"error": self.code, "message": self.message}


# --------------------------------------------------------------------- usage


class UsageError(MicrohiveError):
    """The caller, developer or operator asked for something that cannot work."""

    code = "usage_error"


class ConfigError(UsageError):
    """A mesh file (or an environment override of it) is invalid.

    The message names the file, the line and the field, and says what was
    expected, e.g. ``microhive.yaml:12: services.gateway.port: expected an
    integer between 1 and 65535, got 'http'``.
    """

    code = "config_error"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        where = file or "<config>"
        if line is not None:
            where = f"{where}:{line}"
        prefix = f"{where}: {field}: " if field else f"{where}: "
        super().__init__(prefix + message)
        self.file = file
        self.line = line
        self.field = field
        self.reason = message


class MissingDependency(UsageError):
    """An optional dependency is not installed; the message gives the install hint."""

    code = "missing_dependency"

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'microhive[{extra}]'"
        )
        self.package = package
        self.extra = extra


class InvalidInput(UsageError):
    """Malformed input at a public entry point (HTTP, MCP, bus, CLI)."""

    code = "invalid_input"


class InvalidContext(InvalidInput):
    """A call-context carrier (headers, ``_meta``) held a value that cannot be read."""

    code = "invalid_context"


class TargetRefused(InvalidInput):
    """An outbound URL (web fetch, webhook) resolves to an address the policy refuses.

    Private, loopback, link-local, multicast, reserved and cloud-metadata
    addresses are refused unless the mesh file sets
    ``security.allow_private_targets``; see :mod:`microhive.netpolicy`.
    """

    code = "target_refused"


class PayloadTooLarge(InvalidInput):
    """A request body is larger than the receiving service accepts (HTTP 413)."""

    code = "payload_too_large"


class NotFound(UsageError):
    """The named thing (service, run, file, ...) does not exist."""

    code = "not_found"


# ---------------------------------------------------------------------- stops


class Stop(MicrohiveError):
    """Work ended on purpose: a limit carried in the call context was reached."""

    code = "stop"


class HopLimitExceeded(Stop):
    """The request or event has travelled through its maximum number of hops."""

    code = "hop_limit"


class DeadlineExceeded(Stop):
    """The absolute deadline carried in the call context has passed."""

    code = "deadline_exceeded"


class BudgetExhausted(Stop):
    """The step or token budget carried in the call context is used up."""

    code = "budget_exhausted"


class Cancelled(Stop):
    """The work was cancelled (by a user, or by a shutdown)."""

    code = "cancelled"


# ------------------------------------------------------------------- runtime


class RuntimeFailure(MicrohiveError):
    """Something failed at run time; often worth a retry."""

    code = "runtime_failure"


class ServiceUnavailable(RuntimeFailure):
    """A dependency could not be reached or is not ready."""

    code = "service_unavailable"


class TimeoutFailure(RuntimeFailure):
    """A dependency did not answer within its timeout."""

    code = "timeout"


class Conflict(RuntimeFailure):
    """A precondition (expected version, state) did not hold; nothing was changed."""

    code = "conflict"


class SupervisorError(RuntimeFailure):
    """A mesh process could not be started, or kept crashing."""

    code = "supervisor_error"


class UpstreamError(RuntimeFailure):
    """A dependency answered with an error (converted from a third-party exception)."""

    code = "upstream_error"
