"""Extraction (repeng conventions) and the `plasticity steer extract` CLI on the tiny model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from models import model_dir
from plasticity.steering import extract as ex
from plasticity.steering.files import load_vector_file

PAIRS = [(f"I love {w}. It is wonderful", f"I hate {w}. It is awful")
         for w in ("cats", "rain", "music", "tea", "books", "trains", "snow", "bread")]


@pytest.fixture(scope="module")
def model_tok():
    return ex.load_model(str(model_dir("qwen3-tiny")))


def _hidden_by_hand(model, tok, texts, layer):
    # independent read: one text at a time (no padding), last token, block output
    out = []
    for t in texts:
        ids = tok(t, return_tensors="pt")
        with torch.no_grad():
            hs = model(**ids, output_hidden_states=True).hidden_states
        out.append(hs[layer + 1][0, -1].numpy())
    return np.stack(out)


def test_mean_diff_is_raw_mean_of_last_token_differences(model_tok):
    model, tok = model_tok
    got = ex.extract(model, tok, PAIRS, method="mean_diff", layers=[1, 2], batch_size=5)
    for l in (1, 2):
        pos = _hidden_by_hand(model, tok, [p for p, _ in PAIRS], l)
        neg = _hidden_by_hand(model, tok, [n for _, n in PAIRS], l)
        np.testing.assert_allclose(got[l], (pos - neg).mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["pca_diff", "pca_center"])
def test_pca_unit_norm_and_sign_vote(model_tok, method):
    model, tok = model_tok
    got = ex.extract(model, tok, PAIRS, method=method, layers=[1, 2, 3])
    for l, v in got.items():
        assert abs(np.linalg.norm(v) - 1) < 1e-5
        pos = _hidden_by_hand(model, tok, [p for p, _ in PAIRS], l)
        neg = _hidden_by_hand(model, tok, [n for _, n in PAIRS], l)
        d = (pos - neg) @ v
        assert (d > 0).sum() >= (d < 0).sum(), "sign vote: positive must project higher in most pairs"


def test_pca_diff_is_centred_pca(model_tok):
    model, tok = model_tok
    got = ex.extract(model, tok, PAIRS, method="pca_diff", layers=[2])[2]
    pos = _hidden_by_hand(model, tok, [p for p, _ in PAIRS], 2)
    neg = _hidden_by_hand(model, tok, [n for _, n in PAIRS], 2)
    d = (pos - neg).astype(np.float64)
    w, V = np.linalg.eigh(np.cov(d.T))
    assert abs(abs(float(V[:, -1] @ got)) - 1) < 1e-4


def test_layers_parse():
    assert ex.parse_layers(None, 4) == [1, 2, 3]
    assert ex.parse_layers("all", 4) == [0, 1, 2, 3]
    assert ex.parse_layers("1-2,-1", 4) == [1, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        ex.parse_layers("4", 4)


def test_cli_writes_gguf(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"positive": p, "negative": n}) for p, n in PAIRS))
    out = tmp_path / "v.gguf"
    r = subprocess.run([sys.executable, "-m", "plasticity.cli", "steer", "extract", "--model", str(model_dir("qwen3-tiny")),
                        "--pairs", str(pairs), "--method", "pca_diff", "--layers", "1-3", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    dirs, meta = load_vector_file(out)
    assert sorted(dirs) == [1, 2, 3] and meta["controlvector.model_hint"] == "qwen3"
