"""The README's ten lines for a pretrained ViT and a language model, run on the tiny
transformers-5.x folders of tests/fixtures/hf5: shapes, patch sums equal pixel sums, exact zeros
on padding, every real token relevant, both pictures written as PNG."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

import jxai

HF5 = Path(__file__).parent / "fixtures" / "hf5"


def test_readme_ten_lines_on_the_fixture_folders(tmp_path):
    pixels = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    patch = json.loads((HF5 / "vit" / "config.json").read_text())["patch_size"]
    vit = jxai.load_pretrained(HF5 / "vit")
    rel = jxai.explain(vit, pixels, "lrp.attn_lrp")
    patches = jxai.transformer.patch_relevance(rel, patch)
    jxai.plot.patch_overlay(pixels, rel, patch_size=patch, path=tmp_path / "vit.png")
    assert rel.shape == pixels.shape and patches.shape == (2, 32 // patch, 32 // patch)
    np.testing.assert_allclose(np.asarray(patches).sum((1, 2)), np.asarray(rel).sum((1, 2, 3)),
                               rtol=1e-5)
    lm = jxai.load_pretrained(HF5 / "llama", dtype="float32")
    ids = np.array([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    tokens = jxai.explain(lm, ids, "lrp.attn_lrp", target=7, attention_mask=mask)
    words = [[f"t{i}" for i in row] for row in ids]
    jxai.plot.text_heatmap(words, tokens, mask=mask, path=tmp_path / "tokens.png")
    assert tokens.shape == ids.shape and float(tokens[1, 3]) == 0.0
    assert np.all(np.asarray(tokens)[mask == 1] != 0)
    for name in ("vit.png", "tokens.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
