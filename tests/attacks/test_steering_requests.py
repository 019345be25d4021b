"""Hostile steering requests and admin calls against the real server: each gets
a 4xx with a clear message, and changes nothing (catalogue unchanged, the next
unflagged request still matches vLLM without the plugin)."""

import os

import pytest

import steering_support as ss

pytestmark = pytest.mark.vllm


@pytest.fixture
def unchanged(steer_server, plain_baseline, hf_ref):
    before = ss.http(steer_server, "GET", "/v1/steering/vectors")[1]
    default_before = ss.http(steer_server, "GET", "/v1/steering/default")[1]
    yield
    assert ss.http(steer_server, "GET", "/v1/steering/vectors")[1] == before
    assert ss.http(steer_server, "GET", "/v1/steering/default")[1] == default_before
    p = ss.PROMPTS[0]
    assert ss.complete(steer_server, hf_ref.ids(p), n=16)[0] == plain_baseline[p][0]


def _gen(srv, xargs, path="/v1/completions", key=ss.API_KEY):
    body = {"model": srv.model, "max_tokens": 4, "vllm_xargs": xargs}
    if path == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": "hi"}]
    elif path == "/v1/responses":
        body["input"] = "hi"
    else:
        body["prompt"] = "hello"
    return ss.http(srv, "POST", path, body, key=key)


def _refused(result, code, fragment):
    status, out = result
    assert status == code, out
    msg = out["error"]["message"] if isinstance(out.get("error"), dict) else str(out)
    assert fragment in msg, msg


def test_unknown_vector_name(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "nope"}), 400, "unknown steering vector(s) ['nope']")


def test_unknown_vector_name_chat(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "nope"}, "/v1/chat/completions"), 400, "unknown steering vector")


def test_nan_scale_string(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "alpha", "steer_scale": "nan"}), 400, "not finite")


def test_nan_scale_json_literal(steer_server, unchanged):
    body = b'{"model": "%s", "prompt": "hi", "max_tokens": 2, "vllm_xargs": {"steer": "alpha", "steer_scale": NaN}}' % steer_server.model.encode()
    _refused(ss.http(steer_server, "POST", "/v1/completions", body), 400, "not finite")


def test_inf_scale(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "alpha", "steer_scale": "inf"}), 400, "not finite")


def test_absurd_scale(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "alpha", "steer_scale": 1e6}), 400, "exceeds the limit 100")


def test_layer_out_of_range(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "alpha", "steer_layers": "9"}), 400, "out of range 0..3")


def test_negative_layer(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "alpha", "steer_layers": -1}), 400, "out of range")


def test_layer_without_direction(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "alpha", "steer_layers": "3"}), 400, "has a direction there")


def test_malformed_xargs_not_an_object(steer_server, unchanged):
    _refused(_gen(steer_server, "steer=alpha"), 400, "vllm_xargs must be an object")


def test_nested_value(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "alpha", "steer_scale": [[1]]}), 400, "items must be strings or numbers")


def test_misspelled_key(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "alpha", "steer_layer": 2}), 400, "unknown steering key")


def test_scale_without_vector(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer_scale": 2}), 400, "without vllm_xargs.steer")


def test_scale_count_mismatch(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "alpha,beta", "steer_scale": "1,2,3"}), 400, "3 scales for 2 vectors")


def test_steering_on_unsupported_endpoint(steer_server, unchanged):
    _refused(_gen(steer_server, {"steer": "alpha"}, "/v1/responses"), 400, "not /v1/responses")


def _add(srv, body, key=ss.API_KEY):
    return ss.http(srv, "POST", "/v1/steering/vectors", body, key=key)


def test_wrong_hidden_size(steer_server, unchanged):
    _refused(_add(steer_server, {"name": "w", "values": {"1": [0.1] * 255}}), 400, "the model's hidden size is 256")


def test_vector_layer_out_of_range(steer_server, unchanged):
    _refused(_add(steer_server, {"name": "w", "values": {"4": [0.1] * 256}}), 400, "layer 4 out of range")


def test_nan_in_vector_values(steer_server, unchanged):
    body = b'{"name": "w", "values": {"1": [NaN' + b", 0.1" * 255 + b"]}}"
    _refused(_add(steer_server, body), 400, "NaN or Inf")


def test_overflowing_vector_values(steer_server, unchanged):
    _refused(_add(steer_server, {"name": "w", "values": {"1": [1e300] * 256}}), 400, "NaN or Inf")


def test_bad_vector_name(steer_server, unchanged):
    _refused(_add(steer_server, {"name": "../x", "values": {"1": [0.1] * 256}}), 400, "invalid vector name")


def test_duplicate_name_without_replace(steer_server, unchanged):
    _refused(_add(steer_server, {"name": "alpha", "path": "beta.gguf"}), 400, "already exists")


def test_path_outside_folder_dotdot(steer_server, unchanged):
    _refused(_add(steer_server, {"name": "o", "path": "../outside.gguf"}), 400, "outside the configured vectors folder")


def test_path_outside_folder_absolute(steer_server, unchanged):
    _refused(_add(steer_server, {"name": "o", "path": "/etc/passwd"}), 400, "outside the configured vectors folder")


def test_path_symlink_escape(steer_server, steering_files, unchanged):
    link = steering_files["vectors"] / "sneaky.gguf"
    if not link.exists():
        os.symlink(steering_files["root"] / "outside.gguf", link)
    try:
        _refused(_add(steer_server, {"name": "o", "path": "sneaky.gguf"}), 400, "outside the configured vectors folder")
    finally:
        link.unlink()


def test_path_not_a_vector_file(steer_server, steering_files, unchanged):
    (steering_files["vectors"] / "junk.gguf").write_bytes(b"not a gguf at all")
    try:
        _refused(_add(steer_server, {"name": "j", "path": "junk.gguf"}), 400, "bad magic")
    finally:
        (steering_files["vectors"] / "junk.gguf").unlink()


def test_two_sources(steer_server, unchanged):
    _refused(_add(steer_server, {"name": "x", "path": "beta.gguf", "values": {}}), 400, "exactly one of")


def test_bad_default(steer_server, unchanged):
    _refused(ss.http(steer_server, "POST", "/v1/steering/default", {"vector": "nope", "scale": 1}), 400,
             "unknown steering vector")


def test_default_enabled_as_a_string_is_refused_not_read_as_on(steer_server, unchanged):
    _refused(ss.http(steer_server, "POST", "/v1/steering/default", {"enabled": "false", "vector": "alpha"}), 400,
             "'enabled' must be true or false")


def test_bad_extract_method(steer_server, unchanged):
    _refused(_add(steer_server, {"name": "x", "extract": {"pairs": [["a", "b"], ["c", "d"]], "method": "magic"}}),
             400, "method must be one of")


def test_admin_without_api_key(steer_server, unchanged):
    status, _ = _add(steer_server, {"name": "k", "values": {"1": [0.1] * 256}}, key=None)
    assert status == 401
    status, _ = _add(steer_server, {"name": "k", "values": {"1": [0.1] * 256}}, key="wrong")
    assert status == 401
    assert ss.http(steer_server, "DELETE", "/v1/steering/vectors/alpha", key="wrong")[0] == 401


def test_delete_unknown(steer_server, unchanged):
    _refused(ss.http(steer_server, "DELETE", "/v1/steering/vectors/nope"), 404, "no steering vector named")
