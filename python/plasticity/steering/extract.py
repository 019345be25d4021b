"""Extract steering vectors from contrastive pairs, with repeng's conventions.

- Inputs are flattened ``[p0, n0, p1, n1, ...]``, tokenised raw (no chat
  template) with padding; the activation read is the **last non-pad token**
  (last 1 in the attention mask) of each string.
- Layer ``L`` reads ``hidden_states[L+1]`` of a transformers forward, i.e. the
  output of decoder block ``L`` (the stream block ``L+1`` reads), which is
  where the vector is later added. Quirk kept for compatibility: for the last
  block transformers returns the stream *after* the final norm, as repeng does.
- Default layers: every block but block 0 (repeng's ``range(-1, -n, -1)``,
  and llama.cpp cannot steer block 0).
- Methods:
  - ``pca_diff`` (repeng's default): first principal component of the
    mean-centred differences ``h_pos - h_neg`` (sklearn ``PCA(1)``); unit norm.
  - ``pca_center``: PCA of the rows ``±(h_pos - h_neg)/2`` (= uncentred PCA of
    the differences, = steering-vectors' pca_aggregator); unit norm.
  - ``mean_diff``: ``mean(h_pos - h_neg)`` at its natural scale
    (= steering-vectors' mean_aggregator); no sign vote needed.
- Sign (PCA methods, repeng's rule): start from sklearn's sign (largest-|x|
  entry positive), project each pair's raw activations on the direction and
  flip if "positive < negative" happens in more pairs than "positive > negative".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .spec import SteeringError

METHODS = ("mean_diff", "pca_diff", "pca_center")


def parse_layers(spec: str | None, num_layers: int) -> list[int]:
    """``None``/``"default"`` → 1..n-1; ``"all"``; ``"2,3"``; ``"1-3"``; negatives count from the end."""
    if spec is None or spec == "default":
        return list(range(1, num_layers))
    if spec == "all":
        return list(range(num_layers))
    out: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        try:
            rng = range(int(m.group(1)), int(m.group(2)) + 1) if m else [int(part)]
        except ValueError:
            raise SteeringError(f"bad layer {part!r} (use 2,3 or 1-3 or -1)") from None
        for l in rng:
            l = num_layers + l if l < 0 else l
            if not 0 <= l < num_layers:
                raise SteeringError(f"layer {l} out of range 0..{num_layers - 1}")
            out.add(l)
    return sorted(out)


def load_pairs(path: str | Path) -> list[tuple[str, str]]:
    pairs = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        d = json.loads(line)
        if not isinstance(d, dict) or not isinstance(d.get("positive"), str) or not isinstance(d.get("negative"), str):
            raise SteeringError(f"{path}:{i}: expected {{\"positive\": str, \"negative\": str}}")
        pairs.append((d["positive"], d["negative"]))
    return check_pairs(pairs)


def check_pairs(pairs) -> list[tuple[str, str]]:
    if not isinstance(pairs, list) or len(pairs) < 2:
        raise SteeringError("need at least 2 contrastive pairs")
    out = []
    for p in pairs:
        if isinstance(p, dict):
            p = (p.get("positive"), p.get("negative"))
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) and s for s in p)):
            raise SteeringError("each pair must be {\"positive\": str, \"negative\": str} with non-empty strings")
        out.append((p[0], p[1]))
    return out


def _last_logits_only(model) -> dict:
    """Only the hidden states are read, so skip the vocabulary projection at every position but the
    last (on SmolLM2, 49152 × 576 per token: a fifth of the forward) where the model allows it."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def read_hidden(model, tokenizer, texts: list[str], layers: list[int], batch_size: int = 32) -> dict[int, np.ndarray]:
    import torch

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    hs: dict[int, list[np.ndarray]] = {l: [] for l in layers}
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(texts[s:s + batch_size], padding=True, return_tensors="pt").to(model.device)
            out = model(**enc, output_hidden_states=True, **_last_logits_only(model))
            mask = enc["attention_mask"]
            # index of the last 1 in the mask (works for left and right padding)
            last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
            rows = torch.arange(mask.shape[0])
            for l in layers:
                hs[l].append(out.hidden_states[l + 1][rows, last].float().cpu().numpy())
    return {l: np.concatenate(v) for l, v in hs.items()}


def _pca1(x: np.ndarray) -> np.ndarray:
    xc = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
    v = vt[0]
    # sklearn >= 1.5 svd_flip(u_based_decision=False): largest-|x| entry positive
    return v * np.sign(v[np.argmax(np.abs(v))])


def directions_from_hidden(h: dict[int, np.ndarray], method: str) -> dict[int, np.ndarray]:
    if method not in METHODS:
        raise SteeringError(f"method must be one of {METHODS}, got {method!r}")
    out = {}
    for l, x in h.items():
        x = x.astype(np.float64)
        pos, neg = x[0::2], x[1::2]
        diff = pos - neg
        if method == "mean_diff":
            out[l] = diff.mean(0).astype(np.float32)
            continue
        if method == "pca_diff":
            v = _pca1(diff)
        else:
            c = (pos + neg) / 2
            v = _pca1(np.concatenate([pos - c, neg - c]))
        proj = x @ v / np.linalg.norm(v)
        smaller = np.mean(proj[0::2] < proj[1::2])
        larger = np.mean(proj[0::2] > proj[1::2])
        if smaller > larger:
            v = -v
        out[l] = v.astype(np.float32)
    return out


def extract(model, tokenizer, pairs, method: str = "pca_diff", layers: list[int] | None = None,
            batch_size: int = 32) -> dict[int, np.ndarray]:
    pairs = check_pairs(pairs)
    n = model.config.get_text_config().num_hidden_layers
    layers = layers if layers is not None else parse_layers(None, n)
    texts = [s for p in pairs for s in p]
    return directions_from_hidden(read_hidden(model, tokenizer, texts, layers, batch_size), method)


def load_model(path: str, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.eval()
    return model, tok
