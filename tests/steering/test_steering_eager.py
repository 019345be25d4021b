"""Same steering proof with ``--enforce-eager`` (the compiled mode is covered in test_steering_serving)."""

import pytest

import steering_support as ss
from test_steering_serving import _assert_matches, _vec

pytestmark = pytest.mark.vllm


def test_eager_steered_and_unsteered_match_transformers(steer_server_eager, steering_files, hf_ref):
    a, b = _vec(steering_files, "alpha.safetensors"), _vec(steering_files, "beta.gguf")
    for p in ss.PROMPTS:
        ids = hf_ref.ids(p)
        _assert_matches(ss.complete(steer_server_eager, ids, n=12), hf_ref.greedy(ids, 12))
        _assert_matches(ss.complete(steer_server_eager, ids, n=12, xargs={"steer": "alpha,beta", "steer_scale": "1,-0.5"}),
                        hf_ref.greedy(ids, 12, ss.combine((1.0, a), (-0.5, b))))
