"""Steering in bfloat16 serving, on the dense Qwen3 and on the hybrid Qwen3.5.

Greedy continuations of two bf16 implementations (vLLM's fused CPU kernels vs
eager transformers) can part ways after a near-tie, so this compares
teacher-forced log-probabilities instead: vLLM's ``prompt_logprobs`` of a fixed
token sequence against a transformers bf16 forward of the same weights with
``scale·v`` added after the same blocks.

Tolerance (bf16): mean |Δ logprob| ≤ 0.05 and max ≤ 0.35 per token; and the
steering must move the log-probs by far more than that (≥ 4× the mean
tolerance), so a server that ignored the flag could not pass.
"""

import numpy as np
import pytest
import torch

import steering_support as ss
from models import model_dir

pytestmark = pytest.mark.vllm

TEXT = ("The for statement is used to iterate over the elements of a sequence "
        "(such as a string, tuple or list) or other iterable object.")
MEAN_TOL, MAX_TOL = 0.05, 0.35


def _server(vllm_servers, tmp_path_factory, files, name):
    from conftest import _steering_server

    srv = _steering_server(vllm_servers, tmp_path_factory, (f"steer-bf16-{name}",),
                           ss.plugin_env(files["config"]), extra_args=("--api-key", ss.API_KEY), dtype="bfloat16",
                           model=name, eager=True)
    srv.model_name = name
    return srv


def _prompt_logprobs(srv, ids, xargs=None):
    body = {"model": srv.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    code, out = ss.http(srv, "POST", "/v1/completions", body)
    assert code == 200, out
    plp = out["choices"][0]["prompt_logprobs"]
    vals = []
    for tok, entry in zip(ids[1:], plp[1:]):
        vals.append(entry[str(tok)]["logprob"])
    return np.array(vals)


def _hf_prompt_logprobs(model, ids, deltas):
    hooks = []
    for layer, d in deltas.items():
        dt = torch.from_numpy(d).to(torch.bfloat16)

        def hook(mod, args, out, dt=dt):
            if isinstance(out, tuple):
                return (out[0] + dt,) + tuple(out[1:])
            return out + dt

        hooks.append(model.model.layers[layer].register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1)
        return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("name", ["qwen3-tiny", "qwen3_5-tiny"])
def test_bf16_steered_prompt_logprobs_match_transformers(name, vllm_servers, tmp_path_factory, steering_files, request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from plasticity.steering.files import load_vector_file

    d = model_dir(name)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).eval()
    ids = tok(TEXT)["input_ids"]
    # the hybrid's bf16 server is shared with its serving and training tests (conftest.qwen3_5_server)
    srv = (request.getfixturevalue("qwen3_5_server") if name == "qwen3_5-tiny"
           else _server(vllm_servers, tmp_path_factory, steering_files, name))

    alpha = load_vector_file(steering_files["vectors"] / "alpha.safetensors")[0]  # layers 1, 2; norm 6
    scale = 20.0
    deltas = ss.combine((scale, alpha))

    plain_v = _prompt_logprobs(srv, ids)
    plain_h = _hf_prompt_logprobs(model, ids, {})
    steer_v = _prompt_logprobs(srv, ids, {"steer": "alpha", "steer_scale": scale})
    steer_h = _hf_prompt_logprobs(model, ids, deltas)

    base_err = np.abs(plain_v - plain_h)
    err = np.abs(steer_v - steer_h)
    effect = np.abs(steer_h - plain_h).mean()
    print(f"\n{name} bf16: unsteered mean|Δ| {base_err.mean():.4f} max {base_err.max():.4f}; "
          f"steered mean|Δ| {err.mean():.4f} max {err.max():.4f}; steering effect {effect:.3f}")
    assert base_err.mean() <= MEAN_TOL and base_err.max() <= MAX_TOL, "unsteered bf16 serving differs (anchor)"
    assert err.mean() <= MEAN_TOL and err.max() <= MAX_TOL
    assert effect >= 4 * MEAN_TOL, f"steering moved log-probs by only {effect:.3f}: test would prove nothing"
