"""Declared outputs: the files a sub-task must produce, checked by code after the agent.

A plan's sub-task names its outputs (``outputs``, or its ``inputs.save_to``;
see :mod:`microhive.orchestrator.plan`). When the agent loop ends with an answer,
the worker asks the workspace -- not the model -- whether each file exists. A
missing one fails the attempt with that reason (which goes to the retry), and is
an ERROR on the sub-task's span with an ``output_missing`` event, so a run can
never end ``succeeded`` with a declared output missing, whatever the model said.

:class:`WorkspaceOutputs` asks the workspace service's REST API
(``GET /v1/ws/{ws}/info/{path}``: 200 present, 404 missing); a transport failure
is retried briefly, then reported as the workspace being unreachable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from urllib.parse import quote

import anyio
import httpx

from microhive.errors import ServiceUnavailable, UpstreamError

__all__ = ["OutputCheck", "Prefetch", "WorkspaceOutputs", "output_paths"]


class OutputCheck(Protocol):
    """Says which of some workspace paths do not exist."""

    async def missing(self, paths: Sequence[str]) -> list[str]: ...


class Prefetch(Protocol):
    """Finds what a sub-task will need and hands it over as documents (name -> text)."""

    async def documents(
        self, *, reads: Sequence[str], query: str, project: str
    ) -> dict[str, str]: ...


#: Characters of one prefetched document and of all of them, at most.
DOC_CHARS = 1200
DOCS_CHARS = 3600


def output_paths(outputs: Sequence[str], project: str) -> list[str]:
    """Workspace paths of declared outputs: relative ones live in the project folder.

    The same rule the agents are told (and the offline agent applies): a name
    that already starts with the project folder is taken as it is.
    """
    project = project.strip("/")
    paths = []
    for name in outputs:
        name = name.lstrip("/")
        if project and not name.startswith(project + "/"):
            name = f"{project}/{name}"
        paths.append(name)
    return paths


class WorkspaceOutputs:
    """Checks outputs against a workspace service. ``aclose()`` when done."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        workspace: str = "default",
        timeout: float = 10.0,
        attempts: int = 4,
    ) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.workspace = workspace
        self._attempts = max(1, attempts)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, trust_env=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def missing(self, paths: Sequence[str]) -> list[str]:
        return [p for p in paths if not await self._exists(p)]

    async def documents(self, *, reads: Sequence[str], query: str, project: str) -> dict[str, str]:
        """The files a sub-task reads and the workspace's best hits for its query.

        Each file is looked for in the project folder first, then as a workspace
        path; the search brings the top files for ``query`` (their beginning, and
        the matching passage). Bounded: :data:`DOC_CHARS` a document,
        :data:`DOCS_CHARS` in all. What cannot be found is left out.
        """
        found: dict[str, str] = {}
        for name in reads:
            for path in dict.fromkeys([*output_paths([name], project), name.lstrip("/")]):
                text = await self._text(path)
                if text is not None:
                    found[path] = text[:DOC_CHARS]
                    break
        if query.strip():
            for path, snippet in await self._search(query, limit=6):
                if path in found or len(found) >= 3 + len(reads):
                    continue
                text = await self._text(path)
                body = text[:DOC_CHARS] if text is not None else snippet
                if text is not None and snippet and snippet[:60] not in body:
                    body = f"{body[: DOC_CHARS - len(snippet) - 8]}\n...\n{snippet}"
                found[path] = body
        out: dict[str, str] = {}
        total = 0
        for path, text in found.items():
            if total + len(text) > DOCS_CHARS:
                break
            out[path] = text
            total += len(text)
        return out

    async def _text(self, path: str) -> str | None:
        url = f"/v1/ws/{quote(self.workspace, safe='')}/files/{quote(path)}"
        try:
            response = await self._http.get(url)
        except httpx.HTTPError:
            return None
        kind = response.headers.get("content-type", "")
        if response.status_code != 200 or not kind.startswith(("text/", "application/json")):
            return None
        return response.text

    async def _search(self, query: str, limit: int) -> list[tuple[str, str]]:
        url = f"/v1/ws/{quote(self.workspace, safe='')}/search"
        try:
            response = await self._http.get(url, params={"q": query[:500], "limit": limit})
            hits = response.json()["hits"] if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError, KeyError):
            return []
        seen: dict[str, str] = {}
        for hit in hits:
            seen.setdefault(str(hit.get("path")), str(hit.get("snippet") or ""))
        return list(seen.items())

    async def _exists(self, path: str) -> bool:
        url = f"/v1/ws/{quote(self.workspace, safe='')}/info/{quote(path)}"
        delay = 0.25
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._http.get(url)
            except httpx.HTTPError as exc:
                if attempt == self._attempts:
                    raise ServiceUnavailable(
                        f"cannot check the outputs: the workspace at {self.base_url} did not "
                        f"answer ({type(exc).__name__})"
                    ) from exc
            else:
                if response.status_code == 200:
                    return True
                if response.status_code == 404:
                    return False
                if response.status_code != 503 or attempt == self._attempts:
                    raise UpstreamError(
                        f"cannot check the output {path!r}: the workspace answered "
                        f"{response.status_code}"
                    )
            await anyio.sleep(delay)
            delay *= 2
        return False  # not reached: the last attempt returns or raises
