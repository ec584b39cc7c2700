"""Which addresses an outbound request may reach: the SSRF policy.

A tool that fetches a URL given by a model, or a webhook aimed at a URL given by a
user, must not become a way into the machine's own network: the loopback
interface, the private LAN, link-local ranges and above all the cloud metadata
endpoint (``169.254.169.254``, ``fd00:ec2::254``), which hands out credentials.

Checking the URL's host name is not enough: a name can resolve to ``127.0.0.1``,
resolve differently on the second lookup (DNS rebinding), or redirect to a
private address. So the policy is enforced **where the socket is opened**:
:func:`policy_transport` gives an httpx transport whose network backend resolves
the host, refuses the whole name if *any* of its addresses is refused, and then
connects to exactly the address it checked. Every redirect hop opens its
connection through the same backend, and :class:`SafeHttpClient` also checks each
hop before sending, caps redirects, the body size and the total time.

Refused unless ``security.allow_private_targets`` is set: private (RFC 1918,
IPv6 ULA), loopback, link-local, multicast, reserved, unspecified, shared (CGNAT)
and other non-global addresses, including IPv4 addresses embedded in IPv6
(``::ffff:10.0.0.1``, NAT64, 6to4). Cloud metadata addresses are refused even
then: no tool has a reason to reach them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import httpcore
import httpx

from microhive.errors import (
    InvalidInput,
    ServiceUnavailable,
    TargetRefused,
    TimeoutFailure,
    UpstreamError,
)

if TYPE_CHECKING:
    from microhive.config.model import MeshConfig

__all__ = [
    "METADATA_ADDRESSES",
    "AddressPolicy",
    "SafeHttpClient",
    "SafeResponse",
    "policy_transport",
    "refusal_reason",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public target (``None`` when it is one)."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = refusal_reason(inner)
            return f"an IPv6 form of {inner}, {reason}" if reason else None
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    )
    for attribute, reason in checks:
        if getattr(ip, attribute):
            return reason
    if not ip.is_global:
        return "not a globally routable address"
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """The outbound address rules of one mesh.

    ``allow_private`` lifts the ban on non-public addresses (for a mesh whose tools
    legitimately talk to the LAN, and for tests on loopback); ``allow_networks``
    lifts it for the listed networks only. Metadata addresses stay refused.
    """

    allow_private: bool = False
    allow_networks: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def from_mesh(cls, mesh: MeshConfig | None) -> AddressPolicy:
        """The policy a mesh file asks for (the safe default without one)."""
        if mesh is None:
            return cls()
        return cls(allow_private=mesh.security.allow_private_targets)

    @classmethod
    def allowing(cls, *networks: str) -> AddressPolicy:
        """A default policy that also allows the given networks (e.g. ``"127.0.0.1/32"``)."""
        return cls(allow_networks=tuple(ipaddress.ip_network(n) for n in networks))

    def check_ip(self, ip: IPAddress, host: str | None = None) -> None:
        """Raise :class:`TargetRefused` if ``ip`` may not be reached."""
        where = f"{host} ({ip})" if host and host != str(ip) else str(ip)
        if ip in METADATA_ADDRESSES:
            raise TargetRefused(f"refusing to connect to {where}: a cloud metadata address")
        if self.allow_private or any(ip in net for net in self.allow_networks):
            return
        reason = refusal_reason(ip)
        if reason is not None:
            raise TargetRefused(
                f"refusing to connect to {where}: {reason} "
                "(set security.allow_private_targets in the mesh file to allow it)"
            )

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve ``host`` and check every address; all must be allowed."""
        host = host.strip("[]")
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ServiceUnavailable(f"cannot resolve host {host!r}: {exc}") from exc
            addresses = []
            for info in infos:
                ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                if ip not in addresses:
                    addresses.append(ip)
            if not addresses:
                raise ServiceUnavailable(f"host {host!r} has no addresses")
        for ip in addresses:
            self.check_ip(ip, host)
        return addresses

    async def check_url(self, url: str | httpx.URL) -> httpx.URL:
        """Parse ``url``, require http(s), and check its host's addresses."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise InvalidInput(f"invalid URL {str(url)!r}: {exc}") from None
        if parsed.scheme not in ("http", "https"):
            raise InvalidInput(f"only http and https URLs are allowed, got {str(url)!r}")
        if not parsed.host:
            raise InvalidInput(f"URL {str(url)!r} has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        await self.resolve(parsed.raw_host.decode("ascii"), port)
        return parsed


class _PolicyBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the policy allows, pinned to the checked IP."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._policy.resolve(host, port)
        last: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("unix sockets are not an allowed outbound target")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def policy_transport(policy: AddressPolicy, **kwargs: Any) -> httpx.AsyncHTTPTransport:
    """An httpx transport that connects only where ``policy`` allows.

    Use with ``httpx.AsyncClient(transport=..., trust_env=False)`` (a proxy from
    the environment would otherwise be the one connecting). Keyword arguments go
    to :class:`httpx.AsyncHTTPTransport` (``limits``, ``verify``, ...).
    """
    if kwargs.get("proxy") is not None or kwargs.get("uds") is not None:
        raise InvalidInput("policy_transport cannot be combined with a proxy or a unix socket")
    transport = httpx.AsyncHTTPTransport(**kwargs)
    pool = transport._pool
    # httpx does not expose the network backend; the pool it builds always has one.
    if not isinstance(pool, httpcore.AsyncConnectionPool) or not hasattr(
        pool, "_network_backend"
    ):  # pragma: no cover - guards an httpx/httpcore internals change
        raise RuntimeError("unsupported httpx/httpcore version: cannot enforce the address policy")
    pool._network_backend = _PolicyBackend(policy)
    return transport


@dataclass(frozen=True, slots=True)
class SafeResponse:
    """A fully read, size-limited response, and the hops that led to it."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str
    redirects: tuple[str, ...] = ()

    @property
    def content_type(self) -> str:
        value: str = self.headers.get("content-type", "")
        return value.split(";", 1)[0].strip().lower()

    @property
    def encoding(self) -> str | None:
        header: str = self.headers.get("content-type", "")
        for part in header.split(";")[1:]:
            key, _, value = part.partition("=")
            if key.strip().lower() == "charset" and value.strip():
                return value.strip().strip('"')
        return None

    def text(self) -> str:
        encoding = self.encoding or "utf-8"
        try:
            return self.content.decode(encoding, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")


class SafeHttpClient:
    """A pooled HTTP client that refuses private targets, with size/time/redirect caps.

    One instance per service; it owns a connection pool, so use it as an async
    context manager or call :meth:`aclose`.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        timeout: float = 10.0,
        max_bytes: int = 5 * 1024 * 1024,
        max_redirects: int = 5,
        user_agent: str = "microhive",
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self._client = httpx.AsyncClient(
            transport=policy_transport(policy),
            trust_env=False,
            follow_redirects=False,
            timeout=timeout,
            headers={"user-agent": user_agent},
        )

    async def __aenter__(self) -> SafeHttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        max_bytes: int | None = None,
    ) -> SafeResponse:
        """Send a request, following redirects (each hop checked), and read the body.

        Raises :class:`TargetRefused` (a hop points at a refused address),
        :class:`TimeoutFailure` (the whole exchange took longer than ``timeout``),
        :class:`UpstreamError` (too many redirects, body too large) and
        :class:`ServiceUnavailable` (connection failed).
        """
        limit = self.timeout if timeout is None else timeout
        try:
            with anyio.fail_after(limit):
                return await self._exchange(
                    method, url, headers, json, content, max_bytes or self.max_bytes
                )
        except TimeoutError:
            raise TimeoutFailure(f"{method} {url}: no complete answer within {limit}s") from None
        except httpx.TimeoutException as exc:
            raise TimeoutFailure(f"{method} {url}: timed out ({exc})") from exc
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"{method} {url}: {exc or type(exc).__name__}") from exc

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        json: Any,
        content: bytes | None,
        max_bytes: int,
    ) -> SafeResponse:
        target = await self.policy.check_url(url)
        hops: list[str] = []
        while True:
            request = self._client.build_request(
                method, target, headers=headers, json=json, content=content
            )
            response = await self._client.send(request, stream=True)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    if len(hops) >= self.max_redirects:
                        raise UpstreamError(
                            f"{url}: more than {self.max_redirects} redirects; giving up"
                        )
                    hops.append(str(target))
                    target = await self.policy.check_url(target.join(location))
                    if response.status_code == 303 or (
                        response.status_code in (301, 302) and method.upper() == "POST"
                    ):
                        method, json, content = "GET", None, None
                    continue
                body = await _read_limited(response, max_bytes, str(target))
                return SafeResponse(
                    response.status_code, response.headers, body, str(target), tuple(hops)
                )
            finally:
                await response.aclose()


async def _read_limited(response: httpx.Response, max_bytes: int, url: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise UpstreamError(
            f"{url}: response of {declared} bytes exceeds the {max_bytes}-byte limit"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise UpstreamError(f"{url}: response exceeds the {max_bytes}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
