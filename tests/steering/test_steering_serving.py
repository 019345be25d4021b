"""Steering in the real vLLM CPU server (qwen3-tiny, float32, default compiled mode).

Reference: transformers forward of the same weights with ``scale·v`` added to
the output of the same blocks. Tolerance (float32): identical greedy tokens and
chosen-token logprobs within 2e-3 (vLLM's fused CPU kernels vs eager torch).
"""

import threading

import numpy as np
import pytest

import steering_support as ss

pytestmark = pytest.mark.vllm
LP_TOL = 2e-3


def _vec(files, name):
    from plasticity.steering.files import load_vector_file

    p = files["vectors"] / name
    return load_vector_file(p)[0]


def _assert_matches(got, want):
    (gt, gl), (wt, wl) = got, want
    assert gt == wt, f"tokens differ:\n vllm {gt}\n hf   {wt}"
    assert np.max(np.abs(np.array(gl) - np.array(wl))) < LP_TOL, (gl, wl)


def test_steering_off_is_token_identical_to_vllm_without_plugin(steer_server, plain_baseline, hf_ref):
    for p, base in plain_baseline.items():
        ids = hf_ref.ids(p)
        assert ss.complete(steer_server, ids, n=16)[0] == base[0]
        assert ss.complete(steer_server, ids, n=16, xargs={"steer": "none"})[0] == base[0]
        assert ss.complete(steer_server, ids, n=16, xargs={"unrelated": 1})[0] == base[0]


def test_unsteered_vllm_matches_transformers(plain_baseline, hf_ref):
    # anchors the tolerance: the same comparison without steering
    for p, base in plain_baseline.items():
        _assert_matches(base, hf_ref.greedy(hf_ref.ids(p), 16))


@pytest.mark.parametrize("case", ["one", "two_vectors", "layers_subset", "last_layer"])
def test_steered_matches_transformers(case, steer_server, steering_files, hf_ref, plain_baseline):
    a, b = _vec(steering_files, "alpha.safetensors"), _vec(steering_files, "beta.gguf")
    xargs, deltas = {
        "one": ({"steer": "alpha", "steer_scale": 1.0}, ss.combine((1.0, a))),
        "two_vectors": ({"steer": "alpha,beta", "steer_scale": "0.7,-0.5"}, ss.combine((0.7, a), (-0.5, b))),
        "layers_subset": ({"steer": ["alpha", "beta"], "steer_scale": [1, 1], "steer_layers": "2"},
                          ss.combine((1.0, a, {2}), (1.0, b, {2}))),
        "last_layer": ({"steer": "beta", "steer_scale": 2.0, "steer_layers": 3}, ss.combine((2.0, b, {3}))),
    }[case]
    changed = 0
    for p in ss.PROMPTS:
        ids = hf_ref.ids(p)
        got = ss.complete(steer_server, ids, n=16, xargs=xargs)
        _assert_matches(got, hf_ref.greedy(ids, 16, deltas))
        changed += got[0] != plain_baseline[p][0]
    assert changed, "steering did not change any output: the test would prove nothing"


def test_concurrent_steered_and_unsteered_match_solo(steer_server, hf_ref):
    # prompts of different lengths + staggered max_tokens: prefills and decodes share forwards
    jobs = [(ss.PROMPTS[0], None, 40), (ss.PROMPTS[1], {"steer": "alpha", "steer_scale": 1.0}, 32),
            (ss.PROMPTS[2], None, 24), (ss.PROMPTS[0] * 3, {"steer": "beta", "steer_scale": -1.0}, 40),
            (ss.PROMPTS[1], None, 32), (ss.PROMPTS[2], {"steer": "alpha,beta", "steer_scale": "1,1"}, 16)]
    solo = [ss.complete(steer_server, hf_ref.ids(p), n=n, xargs=x)[0] for p, x, n in jobs]
    for _ in range(2):
        out = [None] * len(jobs)

        def run(i):
            p, x, n = jobs[i]
            out[i] = ss.complete(steer_server, hf_ref.ids(p), n=n, xargs=x)[0]

        ts = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert out == solo


def test_prefix_cache_never_serves_steered_kv_to_unsteered(steer_server, steering_files, hf_ref):
    # Long enough prompt to fill several KV blocks, so prefix caching kicks in.
    ids = hf_ref.ids(" ".join(ss.PROMPTS) * 12)[:700]
    x = {"steer": "alpha", "steer_scale": 1.0}
    steered_first = ss.complete(steer_server, ids, n=8, xargs=x)
    plain_after = ss.complete(steer_server, ids, n=8)
    steered_again = ss.complete(steer_server, ids, n=8, xargs=x)
    plain_again = ss.complete(steer_server, ids, n=8)
    a = _vec(steering_files, "alpha.safetensors")
    _assert_matches(steered_first, hf_ref.greedy(ids, 8, ss.combine((1.0, a))))
    _assert_matches(plain_after, hf_ref.greedy(ids, 8))
    assert steered_again[0] == steered_first[0] and plain_again[0] == plain_after[0]
    assert steered_first[0] != plain_after[0]


def test_default_steering_and_per_request_override(steer_server, plain_baseline, hf_ref):
    p = ss.PROMPTS[0]
    ids = hf_ref.ids(p)
    explicit = ss.complete(steer_server, ids, n=16, xargs={"steer": "alpha", "steer_scale": 1.0})
    code, out = ss.http(steer_server, "POST", "/v1/steering/default", {"vector": "alpha", "scale": 1.0})
    assert code == 200 and out["enabled"], out
    try:
        assert ss.complete(steer_server, ids, n=16)[0] == explicit[0]
        assert ss.complete(steer_server, ids, n=16, xargs={"steer": "none"})[0] == plain_baseline[p][0]
        beta = ss.complete(steer_server, ids, n=16, xargs={"steer": "beta", "steer_scale": 1.0})
        assert beta[0] != explicit[0]
    finally:
        code, out = ss.http(steer_server, "POST", "/v1/steering/default", {"enabled": False})
        assert code == 200 and not out["enabled"]
    assert ss.complete(steer_server, ids, n=16)[0] == plain_baseline[p][0]


def test_admin_vector_lifecycle(steer_server, hf_ref, plain_baseline):
    code, lst = ss.http(steer_server, "GET", "/v1/steering/vectors")
    assert code == 200 and {"alpha", "beta"} <= {v["name"] for v in lst["vectors"]}
    alpha = next(v for v in lst["vectors"] if v["name"] == "alpha")
    assert alpha["layers"] == [1, 2] and alpha["source"] == "file:alpha.safetensors"
    assert abs(alpha["max_norm"] - 400.0) < 1e-2
    g = ss.unit_vectors(7, [0, 2], norm=400.0)
    code, out = ss.http(steer_server, "POST", "/v1/steering/vectors",
                        {"name": "gamma", "values": {str(l): v.tolist() for l, v in g.items()}})
    assert code == 200 and out["layers"] == [0, 2], out
    ids = hf_ref.ids(ss.PROMPTS[1])
    _assert_matches(ss.complete(steer_server, ids, n=12, xargs={"steer": "gamma", "steer_scale": -1.5}),
                    hf_ref.greedy(ids, 12, ss.combine((-1.5, g))))
    # replace in place (new values are used at once), then delete
    g2 = ss.unit_vectors(8, [1], norm=400.0)
    code, out = ss.http(steer_server, "POST", "/v1/steering/vectors",
                        {"name": "gamma", "replace": True, "values": {"1": g2[1].tolist()}})
    assert code == 200, out
    _assert_matches(ss.complete(steer_server, ids, n=12, xargs={"steer": "gamma"}),
                    hf_ref.greedy(ids, 12, ss.combine((1.0, g2))))
    assert ss.http(steer_server, "DELETE", "/v1/steering/vectors/gamma")[0] == 200
    code, out = ss.http(steer_server, "POST", "/v1/completions",
                        {"model": steer_server.model, "prompt": ids, "max_tokens": 2, "vllm_xargs": {"steer": "gamma"}})
    assert code == 400 and "unknown steering vector" in out["error"]["message"]
    # a file inside the vectors folder, under a new name
    code, out = ss.http(steer_server, "POST", "/v1/steering/vectors", {"name": "beta_copy", "path": "beta.gguf"})
    assert code == 200 and out["layers"] == [1, 2, 3], out
    assert ss.http(steer_server, "DELETE", "/v1/steering/vectors/beta_copy")[0] == 200


def test_admin_extract_on_the_spot(steer_server, hf_ref):
    pairs = [{"positive": f"I love {w}. It is wonderful", "negative": f"I hate {w}. It is awful"}
             for w in ("cats", "rain", "music", "tea", "books", "trains")]
    code, out = ss.http(steer_server, "POST", "/v1/steering/vectors",
                        {"name": "mood", "extract": {"pairs": pairs, "method": "mean_diff", "layers": "1,2"}})
    assert code == 200 and out["layers"] == [1, 2], out
    from plasticity.steering import extract as ex

    want = ex.extract(hf_ref.model, hf_ref.tok, pairs, method="mean_diff", layers=[1, 2])
    for l in (1, 2):
        assert abs(out["norm"][str(l)] - float(np.linalg.norm(want[l]))) < 1e-3
    ids = hf_ref.ids(ss.PROMPTS[0])
    _assert_matches(ss.complete(steer_server, ids, n=8, xargs={"steer": "mood", "steer_scale": 3}),
                    hf_ref.greedy(ids, 8, ss.combine((3.0, want))))
    assert ss.http(steer_server, "DELETE", "/v1/steering/vectors/mood")[0] == 200
