"""SSRF policy and the web tool, against a real local HTTP server (loopback only)."""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

import httpx
import pytest
from mcp import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from microhive.errors import InvalidInput, TargetRefused, TimeoutFailure, UpstreamError
from microhive.netpolicy import AddressPolicy, SafeHttpClient, policy_transport, refusal_reason
from microhive.tools.web import WebFetcher, build_service, extract_text

from .conftest import serve

PAGE = """<!doctype html><html><head><title>Hive  news</title>
<style>body { color: red }</style><script>var secret = "do not show";</script></head>
<body><nav>Home | About | Login</nav><header>Site banner</header>
<main><h1>Bees return</h1><p>The colony grew &amp; thrived this spring.</p>
<p>Honey output doubled.<br>Keepers are pleased.</p></main>
<footer>Copyright footer</footer></body></html>"""


class Upstream:
    """A local test site; counts the requests it received."""

    def __init__(self) -> None:
        self.hits = 0
        self.release = threading.Event()
        self.redirect_to = "/page"

    def app(self) -> Starlette:
        def count(fn: Any) -> Any:
            async def wrapped(request: Request) -> Response:
                self.hits += 1
                return await fn(request)

            return wrapped

        async def page(request: Request) -> Response:
            return Response(PAGE, media_type="text/html; charset=utf-8")

        async def redirect(request: Request) -> Response:
            return RedirectResponse(self.redirect_to, status_code=302)

        async def loop(request: Request) -> Response:
            return RedirectResponse("/loop", status_code=307)

        async def big(request: Request) -> Response:
            return PlainTextResponse("x" * 200_000)

        async def image(request: Request) -> Response:
            return Response(b"\x89PNG....", media_type="image/png")

        async def missing(request: Request) -> Response:
            return PlainTextResponse("nothing here", status_code=404)

        def slow(request: Request) -> Response:
            self.release.wait(10)
            return PlainTextResponse("late")

        return Starlette(
            routes=[
                Route("/page", count(page)),
                Route("/redirect", count(redirect)),
                Route("/loop", count(loop)),
                Route("/big", count(big)),
                Route("/image", count(image)),
                Route("/missing", count(missing)),
                Route("/slow", slow),
            ]
        )


@pytest.fixture
def site() -> Any:
    upstream = Upstream()
    with serve(upstream.app()) as base:
        try:
            yield upstream, base
        finally:
            upstream.release.set()  # before the server stops, so it need not wait for /slow


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.5.4",
        "172.31.255.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "::",
        "fd00::1",
        "fd00:ec2::254",
        "fe80::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "64:ff9b::a00:1",
        "2002:c0a8:101::",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert refusal_reason(ip) is not None
    with pytest.raises(TargetRefused, match="refusing to connect"):
        AddressPolicy().check_ip(ip)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert refusal_reason(ip) is None
    AddressPolicy().check_ip(ip)


def test_metadata_is_refused_even_when_private_targets_are_allowed() -> None:
    policy = AddressPolicy(allow_private=True)
    policy.check_ip(ipaddress.ip_address("10.0.0.1"))
    for address in ["169.254.169.254", "fd00:ec2::254"]:
        with pytest.raises(TargetRefused, match="metadata"):
            policy.check_ip(ipaddress.ip_address(address))


async def test_ssrf_attempts_are_refused_by_default(site: Any) -> None:
    upstream, base = site
    port = base.rsplit(":", 1)[1]
    targets = [
        f"{base}/page",
        f"http://localhost:{port}/page",  # a host name that resolves to loopback
        f"http://[::1]:{port}/page",
        f"http://[::ffff:127.0.0.1]:{port}/page",
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://2130706433/",  # 127.0.0.1 as one decimal number
    ]
    async with SafeHttpClient(AddressPolicy(), timeout=5) as client:
        for url in targets:
            with pytest.raises(TargetRefused):
                await client.request("GET", url)
        for url in ["ftp://example.com/", "file:///etc/passwd", "http:///nohost"]:
            with pytest.raises(InvalidInput):
                await client.request("GET", url)
    assert upstream.hits == 0


async def test_the_transport_itself_refuses_so_a_bypassed_check_cannot_connect(site: Any) -> None:
    upstream, base = site
    async with httpx.AsyncClient(
        transport=policy_transport(AddressPolicy()), trust_env=False
    ) as http:
        with pytest.raises(TargetRefused):
            await http.get(f"{base}/page")
        with pytest.raises(TargetRefused):
            await http.get(f"http://localhost:{base.rsplit(':', 1)[1]}/page")
    async with httpx.AsyncClient(
        transport=policy_transport(AddressPolicy.allowing("127.0.0.1/32")), trust_env=False
    ) as http:
        assert (await http.get(f"{base}/page")).status_code == 200
    assert upstream.hits == 1


async def test_every_redirect_hop_is_rechecked(site: Any) -> None:
    upstream, base = site
    port = base.rsplit(":", 1)[1]
    policy = AddressPolicy.allowing("127.0.0.1/32")  # the test site, and nothing else private
    async with SafeHttpClient(policy, timeout=5, max_redirects=3) as client:
        followed = await client.request("GET", f"{base}/redirect")
        assert followed.status_code == 200 and followed.redirects == (f"{base}/redirect",)
        for target in [
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.7/",
            f"http://[::1]:{port}/page",
            "http://192.168.1.1/admin",
        ]:
            upstream.redirect_to = target
            with pytest.raises(TargetRefused):
                await client.request("GET", f"{base}/redirect")
        with pytest.raises(UpstreamError, match="more than 3 redirects"):
            await client.request("GET", f"{base}/loop")


async def test_fetch_extracts_readable_text_when_private_targets_are_allowed(site: Any) -> None:
    _, base = site
    async with WebFetcher(AddressPolicy(allow_private=True), timeout=5, max_bytes=50_000) as web:
        page = await web.fetch(f"{base}/page")
        assert page.title == "Hive news"
        assert page.text.splitlines() == [
            "Bees return",
            "The colony grew & thrived this spring.",
            "Honey output doubled.",
            "Keepers are pleased.",
        ]
        assert page.content_type == "text/html"
        short = await web.fetch(f"{base}/page", max_chars=5)
        assert short.truncated and short.text == "Bees "
        with pytest.raises(UpstreamError, match="50000-byte limit"):
            await web.fetch(f"{base}/big")
        with pytest.raises(InvalidInput, match="image/png"):
            await web.fetch(f"{base}/image")
        with pytest.raises(UpstreamError, match="HTTP 404"):
            await web.fetch(f"{base}/missing")
    async with WebFetcher(AddressPolicy(allow_private=True), timeout=0.5) as web:
        with pytest.raises(TimeoutFailure):
            await web.fetch(f"{base}/slow")


def test_extract_text_drops_chrome_and_scripts() -> None:
    title, text = extract_text(
        "<html><body><div>Intro<script>alert(1)</script></div><aside>ads</aside>"
        "<ul><li>one</li><li>two</li></ul><img src=x><p>end</p></body></html>"
    )
    assert title == ""
    assert text.splitlines() == ["Intro", "one", "two", "end"]


async def test_web_tool_over_mcp(site: Any) -> None:
    upstream, base = site
    allowed = build_service(WebFetcher(AddressPolicy(allow_private=True), timeout=5))
    refused = build_service(WebFetcher(AddressPolicy(), timeout=5))
    with serve(allowed.asgi_app()) as ok_base, serve(refused.asgi_app()) as no_base:
        async with Client(ok_base + "/mcp") as client:
            tools = (await client.list_tools()).tools
            assert tools[0].annotations is not None and tools[0].annotations.open_world_hint
            result = await client.call_tool("fetch", {"url": f"{base}/page"})
            assert not result.is_error and result.structured_content is not None
            assert result.structured_content["title"] == "Hive news"
        hits = upstream.hits
        async with Client(no_base + "/mcp") as client:
            result = await client.call_tool("fetch", {"url": f"{base}/page"})
            assert result.is_error and "target_refused" in str(result.content)
            metadata = await client.call_tool("fetch", {"url": "http://169.254.169.254/"})
            assert metadata.is_error and "metadata" in str(metadata.content)
        assert upstream.hits == hits
