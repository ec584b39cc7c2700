"""Fetch a web page and extract its readable text, safely.

The URL comes from a model, so the fetch goes through
:class:`~microhive.netpolicy.SafeHttpClient`: private, loopback, link-local and
cloud-metadata addresses are refused (unless the mesh sets
``security.allow_private_targets``), the connection is pinned to the address that
was checked, every redirect is re-checked and their number capped, and the body
size and total time are bounded. Only textual content types are accepted.

Readable text is extracted with the standard library's :mod:`html.parser`: the
contents of ``script``, ``style``, ``nav``, ``header``, ``footer``, ``aside``,
``form`` and similar elements are dropped, block elements become line breaks, and
when the page has ``<main>`` or ``<article>`` only those are kept.

Plain API: :class:`WebFetcher` and :func:`extract_text`; :func:`build_service` /
:func:`create_service` make the MCP tool service (tool ``fetch``).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from microhive.errors import InvalidInput, UpstreamError
from microhive.netpolicy import AddressPolicy, SafeHttpClient

if TYPE_CHECKING:
    from microhive.mcp.server import ToolService
    from microhive.service import Service, ServiceContext

__all__ = [
    "TEXT_TYPES",
    "WebFetcher",
    "WebPage",
    "build_service",
    "create_service",
    "extract_text",
]

#: Content types the fetcher accepts (``text/*`` is accepted too).
TEXT_TYPES = frozenset(
    {
        "application/xhtml+xml",
        "application/json",
        "application/xml",
        "application/rss+xml",
        "application/atom+xml",
    }
)
_SKIP = frozenset(
    {
        "script",
        "style",
        "noscript",
        "template",
        "svg",
        "nav",
        "header",
        "footer",
        "aside",
        "form",
        "iframe",
        "canvas",
        "button",
        "select",
        "head",
    }
)
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_BLOCK = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "main",
        "br",
        "li",
        "ul",
        "ol",
        "tr",
        "table",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "pre",
        "hr",
        "dd",
        "dt",
        "figcaption",
    }
)
_FOCUS = frozenset({"main", "article"})


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self._in_title = False
        self._skip = 0
        self._focus = 0
        self.all: list[str] = []
        self.focused: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in _VOID:
            if tag in _BLOCK:
                self._emit("\n")
            return
        if tag in _SKIP:
            self._skip += 1
        if tag in _FOCUS:
            self._focus += 1
        if tag in _BLOCK:
            self._emit("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in _VOID:
            return
        if tag in _BLOCK:
            self._emit("\n")
        if tag in _SKIP and self._skip:
            self._skip -= 1
        if tag in _FOCUS and self._focus:
            self._focus -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
            return
        if not self._skip:
            self._emit(data)

    def _emit(self, text: str) -> None:
        if self._skip:
            return
        self.all.append(text)
        if self._focus:
            self.focused.append(text)


def _tidy(parts: list[str]) -> str:
    lines = (re.sub(r"[ \t\r\f\v\xa0]+", " ", line).strip() for line in "".join(parts).split("\n"))
    return "\n".join(line for line in lines if line)


def extract_text(html: str) -> tuple[str, str]:
    """``(title, readable text)`` of an HTML document."""
    parser = _Extractor()
    parser.feed(html)
    parser.close()
    focused = _tidy(parser.focused)
    text = focused if focused else _tidy(parser.all)
    return re.sub(r"\s+", " ", parser.title).strip(), text


class WebPage(BaseModel):
    """A fetched page: its final URL, title and readable text."""

    model_config = ConfigDict(frozen=True)

    url: str
    status: int
    content_type: str
    title: str
    text: str
    truncated: bool = False
    redirects: list[str] = []


class WebFetcher:
    """Fetches pages under an address policy; owns a connection pool (``aclose``)."""

    def __init__(
        self,
        policy: AddressPolicy | None = None,
        *,
        timeout: float = 15.0,
        max_bytes: int = 5 * 1024 * 1024,
        max_redirects: int = 5,
        user_agent: str = "microhive-web/0.1",
    ) -> None:
        self.client = SafeHttpClient(
            policy or AddressPolicy(),
            timeout=timeout,
            max_bytes=max_bytes,
            max_redirects=max_redirects,
            user_agent=user_agent,
        )

    async def __aenter__(self) -> WebFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch(self, url: str, max_chars: int = 100_000) -> WebPage:
        """Fetch ``url`` and return its readable text (at most ``max_chars``)."""
        if not isinstance(url, str) or not url.strip():
            raise InvalidInput("url must be a non-empty http(s) URL")
        if max_chars < 1:
            raise InvalidInput("max_chars must be at least 1")
        response = await self.client.request(
            "GET", url.strip(), headers={"accept": "text/html, text/plain;q=0.9, */*;q=0.1"}
        )
        if response.status_code >= 400:
            raise UpstreamError(
                f"{response.url} answered HTTP {response.status_code}: {response.text()[:200]}"
            )
        kind = response.content_type
        body = response.text()
        if not kind:
            kind = "text/html" if body.lstrip().startswith("<") else "text/plain"
        if not (kind.startswith("text/") or kind in TEXT_TYPES):
            raise InvalidInput(f"{response.url} is {kind}, not a text document")
        if kind in ("text/html", "application/xhtml+xml"):
            title, text = extract_text(body)
        else:
            title, text = "", body.strip()
        truncated = len(text) > max_chars
        return WebPage(
            url=response.url,
            status=response.status_code,
            content_type=kind,
            title=title,
            text=text[:max_chars],
            truncated=truncated,
            redirects=list(response.redirects),
        )


def build_service(fetcher: WebFetcher, name: str = "web") -> ToolService:
    """The web fetcher as an MCP tool service (tool ``fetch``)."""
    from microhive.mcp.server import ToolService

    svc = ToolService(name, description="Fetch web pages and extract their readable text.")

    @svc.tool(read_only=True, idempotent=True, open_world=True)
    async def fetch(url: str, max_chars: int = 20_000) -> WebPage:
        """Fetch a web page (http or https) and return its title and readable text.

        Private, loopback and cloud-metadata addresses are refused.

        Args:
            url: the address of the page
            max_chars: return at most this many characters of text
        """
        return await fetcher.fetch(url, max_chars)

    svc.on_close(fetcher.aclose)
    return svc


def create_service(ctx: ServiceContext) -> Service:
    """Mesh kind ``web``: optional settings ``timeout``, ``max_bytes``, ``max_redirects``."""
    from microhive.mcp.services import mesh_service

    settings = ctx.spec.settings
    fetcher = WebFetcher(
        AddressPolicy.from_mesh(ctx.mesh),
        timeout=float(settings.get("timeout", 15.0)),
        max_bytes=int(settings.get("max_bytes", 5 * 1024 * 1024)),
        max_redirects=int(settings.get("max_redirects", 5)),
    )
    return mesh_service(build_service(fetcher, ctx.name), ctx)
