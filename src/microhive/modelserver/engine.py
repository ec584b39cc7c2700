"""llama.cpp's server, in-process through ``xllamacpp``: load a GGUF model, answer chat requests.

``xllamacpp.Server`` loads the model and runs llama.cpp's own scheduler; a chat
request is a blocking call that releases the GIL, so each runs in a worker
thread, at most ``slots`` at a time (the rest wait here, without a thread).
A streamed request hands each chunk from that thread to the event loop with
``call_soon_threadsafe``; returning ``True`` from the chunk callback makes
llama.cpp stop the generation and free the slot, which is how a client that
goes away stops its stream. A non-streamed request cannot be stopped: it runs to
its end, which ``max_tokens`` (at most the context size) bounds.

``xllamacpp`` also always starts llama.cpp's own HTTP listener. It is bound to a
free loopback port with a random API key that never leaves this process, so only
the routes of the microhive service (behind its auth, limits and metrics) serve
the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread

from microhive.errors import (
    InvalidInput,
    MicrohiveError,
    MissingDependency,
    NotFound,
    RuntimeFailure,
    ServiceUnavailable,
)
from microhive.modelserver.settings import ModelServerSettings

__all__ = [
    "ChatStream",
    "LlamaEngine",
    "ModelError",
    "ModelLoadError",
    "convert_error",
    "convert_exception",
    "load_llama_server",
]

#: Seconds shut-down waits for generations still running before it frees the model.
_CLOSE_WAIT = 30.0


class ModelLoadError(RuntimeFailure):
    """llama.cpp could not load the model file."""

    code = "model_load_failed"


class ModelError(RuntimeFailure):
    """llama.cpp failed while answering a request (HTTP 500)."""

    code = "model_error"


class LlamaEngine:
    """One loaded model; ``await load()``, then :meth:`complete` or :meth:`stream`.

    ``loader`` builds the llama.cpp server from the settings (default: an
    ``xllamacpp.Server``); anything with ``handle_chat_completions(body,
    callback=None)`` will do, which is how the tests drive the threading and
    cancellation without a model.
    """

    def __init__(
        self,
        settings: ModelServerSettings,
        loader: Callable[[ModelServerSettings], Any] | None = None,
    ) -> None:
        self.settings = settings
        self._loader = loader or load_llama_server
        self._server: Any = None
        self._slots = asyncio.Semaphore(settings.slots)
        self.active = 0
        self.waiting = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._streams: set[ChatStream] = set()
        #: Called when a stream was stopped while llama.cpp was still generating.
        self.on_stopped: Callable[[], None] | None = None

    @property
    def loaded(self) -> bool:
        return self._server is not None

    async def load(self) -> None:
        """Load the model in a worker thread (a few seconds for a small model)."""
        self._server = await anyio.to_thread.run_sync(self._loader, self.settings)

    # ------------------------------------------------------------- requests

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[Any]:
        """Wait for a free slot (without a thread); yields the llama.cpp server."""
        server = self._server
        if server is None:
            raise ServiceUnavailable("the model is not loaded")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        self._idle.clear()
        try:
            yield server
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()
            self._slots.release()

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed completion: the OpenAI-style response dict."""
        async with self._slot() as server:
            try:
                result = await anyio.to_thread.run_sync(server.handle_chat_completions, body)
            except Exception as exc:
                raise convert_exception(exc) from exc
        if not isinstance(result, dict) or "choices" not in result:
            raise convert_error(result)
        return result

    def stream(self, body: dict[str, Any]) -> ChatStream:
        """A streamed completion: iterate the chunks; :meth:`ChatStream.cancel` stops it."""
        if self._server is None:
            raise ServiceUnavailable("the model is not loaded")
        stream = ChatStream()
        self._streams.add(stream)
        stream.task = asyncio.create_task(self._run_stream(body, stream))
        stream.task.add_done_callback(lambda _: self._streams.discard(stream))
        return stream

    async def _run_stream(self, body: dict[str, Any], stream: ChatStream) -> None:
        try:
            async with self._slot() as server:
                if stream.cancelled:  # the client left while it waited for a slot
                    return

                def run() -> None:
                    try:
                        server.handle_chat_completions(body, stream.on_chunk)
                    except Exception as exc:
                        stream.put("error", convert_exception(exc))

                await anyio.to_thread.run_sync(run)
                if stream.stopped_early and self.on_stopped is not None:
                    self.on_stopped()
        except MicrohiveError as exc:
            stream.put("error", exc)
        finally:
            stream.put("end", None)

    async def aclose(self) -> None:
        """Stop every stream, wait (bounded) for running generations, free the model."""
        for stream in list(self._streams):
            stream.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), _CLOSE_WAIT)
        server, self._server = self._server, None
        if server is None or self.active:
            return  # a generation is still running in a thread: the process exit frees it
        box = [server]
        del server
        await anyio.to_thread.run_sync(box.clear)  # the destructor joins llama.cpp's threads


def load_llama_server(s: ModelServerSettings) -> Any:
    """An ``xllamacpp.Server`` with the model of ``s`` loaded (blocking: seconds)."""
    try:
        import xllamacpp
    except ImportError:
        raise MissingDependency("xllamacpp", "model-server", "the model-server service") from None
    params = xllamacpp.CommonParams()
    params.model.path = str(s.model.path)
    params.model_alias = {s.alias}
    # llama.cpp splits the context between the slots; each slot gets context_size.
    params.n_ctx = s.context_size * s.slots
    params.n_parallel = s.slots
    params.cpuparams.n_threads = s.total_threads
    params.cpuparams_batch.n_threads = s.total_threads
    params.use_jinja = True
    params.verbosity = -1
    # Its own HTTP listener cannot be turned off: loopback, a free port, a key nobody has.
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.api_keys = [secrets.token_urlsafe(32)]
    params.n_threads_http = 1
    params.ui = False
    params.offline = True
    try:
        return xllamacpp.Server(params)
    except Exception as exc:
        raise ModelLoadError(
            f"llama.cpp could not load {s.model.path}: {exc} (is it a GGUF model file, "
            f"and is there memory for {s.slots} slot(s) of {s.context_size} tokens?)"
        ) from exc


class ChatStream:
    """The chunks of one streamed completion, produced by llama.cpp in a worker thread.

    Iterating yields chunk dicts until the last one; an error chunk or a failed
    call raises the matching microhive error instead. :meth:`cancel` (call it when
    the client goes away) makes llama.cpp stop at its next token;
    ``stopped_early`` then tells that it was still generating.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        self._done = False
        self.stopped_early = False
        self.task: asyncio.Task[None] | None = None

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def cancel(self) -> None:
        """Stop the generation at the next token (or before it starts)."""
        self._stop.set()

    # --- the worker thread's side

    def on_chunk(self, chunk: Any) -> bool:
        """llama.cpp's callback: queue the chunk; ``True`` asks it to stop."""
        if self._stop.is_set():
            self.stopped_early = True
            return True
        self.put("chunk", chunk)
        return False

    def put(self, kind: str, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, item))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self._stop.set()

    # --- the event loop's side

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._done:
            raise StopAsyncIteration
        kind, item = await self._queue.get()
        if kind == "end":
            self._done = True
            raise StopAsyncIteration
        if kind == "error":
            self._done = True
            raise item
        if not isinstance(item, dict) or "error" in item or "choices" not in item:
            self._done = True
            self.cancel()
            raise convert_error(item)
        return item


def convert_error(result: Any) -> MicrohiveError:
    """llama.cpp's error answer (``{"error": {"code", "message", "type"}}``) as our error."""
    error = result.get("error", result) if isinstance(result, dict) else result
    if not isinstance(error, dict):
        return ModelError(f"llama.cpp answered something unexpected: {str(result)[:300]}")
    message = str(error.get("message") or "llama.cpp refused the request")
    code = error.get("code")
    if code in (400, 413, 422) or error.get("type") == "invalid_request_error":
        return InvalidInput(message)
    if code == 404:
        return NotFound(message)
    if code == 501:
        return InvalidInput(f"not supported by this server: {message}")
    if code == 503:
        return ServiceUnavailable(message)
    return ModelError(f"llama.cpp failed: {message}")


def convert_exception(exc: Exception) -> MicrohiveError:
    """An exception out of ``handle_chat_completions`` as our error.

    llama.cpp raises ``std::invalid_argument`` (a ``ValueError`` here) for a request
    it cannot use, e.g. a schema it cannot turn into a grammar.
    """
    if isinstance(exc, MicrohiveError):
        return exc
    if isinstance(exc, ValueError):
        return InvalidInput(f"llama.cpp refused the request: {exc}")
    return ModelError(f"llama.cpp failed: {type(exc).__name__}: {exc}")
