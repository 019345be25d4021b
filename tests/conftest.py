"""Shared pytest fixtures.

vLLM servers are expensive (1-2 min start-up on CPU) and this is a 2-core box,
so a single session-wide manager keeps at most one server alive: asking for
another model stops the current one first.  Tests that need a server should
group by model (the parametrized ``vllm_server`` fixture does) so each model's
server starts only once per session.
"""

from __future__ import annotations

import pytest

from models import model_dir

# The CPU backend's Gated DeltaNet kernels assert BF16 ("CPU GDN attention
# requires BF16."), so the hybrid is served in bfloat16; the plain Qwen3 in float32.
VLLM_DTYPES = {"qwen3-tiny": "float32", "qwen3_5-tiny": "bfloat16"}


class VLLMServers:
    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.current = None  # (key, VLLMServer)

    def get(self, name: str, dtype: str | None = None, extra_args: tuple[str, ...] = ()):
        from vllm_server import VLLMServer

        dtype = dtype or VLLM_DTYPES.get(name, "float32")
        key = (name, dtype, tuple(extra_args))
        if self.current and self.current[0] == key:
            return self.current[1]
        self.close()
        srv = VLLMServer(model_dir(name), dtype=dtype, extra_args=extra_args,
                         log_path=self.log_dir / f"vllm-{name}-{dtype}.log")
        srv.start()
        print(f"\nvLLM {name} ({dtype}) healthy after {srv.startup_seconds:.0f} s, log {srv.log_path}")
        self.current = (key, srv)
        return srv

    def running(self, key):
        """The server of configuration ``key`` if it is the one running, else None."""
        return self.current[1] if self.current and self.current[0] == key else None

    def close(self):
        if self.current:
            self.current[1].stop()
            self.current = None


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory):
    """Factory: ``vllm_servers.get("qwen3-tiny")`` -> running VLLMServer (one at a time)."""
    pytest.importorskip("vllm")
    mgr = VLLMServers(tmp_path_factory.mktemp("vllm-logs"))
    yield mgr
    mgr.close()


@pytest.fixture(params=["qwen3-tiny", "qwen3_5-tiny"])
def vllm_server(request):
    """A server of one test model, shared with the other tests of its configuration: qwen3-tiny on
    vanilla vLLM (no plugin, the steering baseline's server), qwen3_5-tiny on the shared bf16 one."""
    fixture = "plain_server" if request.param == "qwen3-tiny" else "qwen3_5_server"
    return request.param, request.getfixturevalue(fixture)


# Server fixtures are function-scoped on purpose: a session-scoped one would
# hand out a server that another fixture has since stopped (only one runs at a
# time). Each returns the running server when it is already the current one,
# and tests are ordered below so each server starts as few times as possible.
def _server_group(item) -> tuple:
    names = set(getattr(item, "fixturenames", ()))
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "vllm_server" in names:  # vanilla qwen3-tiny first (the steering baseline's server), then qwen3_5
        return (1, "0") if params.get("vllm_server") == "qwen3-tiny" else (3, "qwen3_5-tiny")
    if names & {"plain_baseline", "steer_server"}:
        return (1, "1")
    if "steer_server_eager" in names:
        return (2, "")
    if item.module.__name__.endswith("test_steering_bf16"):
        return (3, str(params.get("name", "")))
    if "qwen3_5_server" in names:  # after the steering and serving checks: training moves the weights
        return (3, "qwen3_5-tiny~")
    if "train_server" in names:
        return (5, "")
    if "lora_server" in names:  # its main test and its attack cases share one server
        return (7, "")
    if "vllm_servers" in names:
        return (6, item.module.__name__)
    return (0, "")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_server_group)  # stable: file order is kept inside a group


# ---- plasticity steering fixtures (steering work; additions only, keep as one block) ----
# The steering server runs through the shared one-at-a-time manager above: it
# stops whatever server is up, and a later `vllm_servers.get(...)` stops it.


def _steering_server(vllm_servers, tmp_path_factory, key, env, extra_args=(), dtype="float32", model="qwen3-tiny",
                     eager=False):
    """Start (or return) the server of configuration ``key``. ``eager`` adds ``--enforce-eager``:
    vLLM CPU's torch.compile warm-up is most of a start (qwen3-tiny: 113 s compiled on a cold cache,
    78 s warm, 57 s eager, measured on 2 cores), so only the servers whose subject includes the
    compiled graph run compiled: vanilla and steered serving, the training server (in-place updates
    seen by compiled code), the hybrid, SmolLM2 (the main job's configuration) and the LoRA server
    (its test served adapters for 177 s compiled, 219-257 s eager: more than the start saves). The
    others test HTTP and bookkeeping logic (snapshots, dreams, bf16 numerics), which does not
    change with the mode."""
    from vllm_server import VLLMServer

    if srv := vllm_servers.running(key):
        return srv
    vllm_servers.close()
    if eager and "--enforce-eager" not in extra_args:
        extra_args = (*extra_args, "--enforce-eager")
    log = tmp_path_factory.mktemp("steer-logs") / f"{key[0]}.log"
    srv = VLLMServer(model_dir(model), dtype=dtype, extra_args=extra_args, env=env, log_path=log)
    srv.start()
    print(f"\nvLLM {key[0]} healthy after {srv.startup_seconds:.0f} s, log {srv.log_path}")
    vllm_servers.current = (key, srv)
    return srv


@pytest.fixture(scope="session")
def steering_files(tmp_path_factory):
    """A plasticity.toml with admin on, and a vectors folder with two files."""
    import steering_support as ss
    from plasticity.steering.files import save_gguf, save_safetensors

    root = tmp_path_factory.mktemp("steering")
    vecs = root / "vectors"
    vecs.mkdir()
    save_safetensors(vecs / "alpha.safetensors", ss.unit_vectors(1, [1, 2], norm=400.0), "qwen3")
    save_gguf(vecs / "beta.gguf", ss.unit_vectors(2, [1, 2, 3], norm=400.0), "qwen3")
    (root / "outside.gguf").write_bytes((vecs / "beta.gguf").read_bytes())
    cfg = root / "plasticity.toml"
    cfg.write_text('[steering]\nadmin = true\nvectors_dir = "vectors"\nmax_abs_scale = 100.0\n')
    return {"root": root, "vectors": vecs, "config": cfg}


@pytest.fixture
def plain_server(vllm_servers, tmp_path_factory):
    """qwen3-tiny, float32, compiled mode, on vanilla vLLM (every general plugin but ours)."""
    import steering_support as ss

    return _steering_server(vllm_servers, tmp_path_factory, ("plain-no-plugin",), ss.plain_env())


@pytest.fixture(scope="session")
def plain_baseline(vllm_servers, tmp_path_factory):
    """Greedy outputs of vLLM *without* the plugin for steering_support.PROMPTS (compiled mode)."""
    import steering_support as ss

    pytest.importorskip("vllm")
    srv = _steering_server(vllm_servers, tmp_path_factory, ("plain-no-plugin",), ss.plain_env())
    ref = ss.HFReference(model_dir("qwen3-tiny"))
    out = {p: ss.complete(srv, ref.ids(p), n=16, key=None) for p in ss.PROMPTS}
    vllm_servers.close()
    return out


@pytest.fixture(scope="session")
def hf_ref():
    import steering_support as ss

    return ss.HFReference(model_dir("qwen3-tiny"))


@pytest.fixture
def steer_server(vllm_servers, tmp_path_factory, steering_files, plain_baseline):
    """qwen3-tiny, float32, vLLM's default compiled mode, plugin + admin + API key."""
    import steering_support as ss

    return _steering_server(vllm_servers, tmp_path_factory, ("steer-compiled",),
                            ss.plugin_env(steering_files["config"]), extra_args=("--api-key", ss.API_KEY))


@pytest.fixture
def steer_server_eager(vllm_servers, tmp_path_factory, steering_files):
    import steering_support as ss

    return _steering_server(vllm_servers, tmp_path_factory, ("steer-eager",), ss.plugin_env(steering_files["config"]),
                            extra_args=("--api-key", ss.API_KEY, "--enforce-eager"))


@pytest.fixture
def qwen3_5_server(vllm_servers, tmp_path_factory, steering_files):
    """The hybrid qwen3_5-tiny in bfloat16, one server for its steering, serving and training tests:
    plugin + steering admin (the session's vectors) + [training] on all-linear and the GDN parameters
    + the two suites' API keys + dev mode. Prefix caching is off, as for any hybrid served here."""
    import steering_support as ss
    import training_support as ts

    key = ("qwen3_5-shared",)
    if srv := vllm_servers.running(key):
        return srv
    root = tmp_path_factory.mktemp("qwen3_5")
    cfg = ts.write_config(root, modules=["all-linear", "gdn"], batch_size=2, replay_ratio=0.5)
    cfg.write_text(cfg.read_text() + f'\n[steering]\nadmin = true\nvectors_dir = "{steering_files["vectors"]}"\n'
                   'max_abs_scale = 100.0\n')
    env = {**ts.plugin_env(cfg), "VLLM_SERVER_DEV_MODE": "1"}
    srv = _steering_server(vllm_servers, tmp_path_factory, key, env, dtype="bfloat16", model="qwen3_5-tiny",
                           extra_args=("--api-key", ts.API_KEY, ss.API_KEY, "--no-enable-prefix-caching"))
    srv.served_model_name = srv.model
    srv.api_key = ts.API_KEY  # for VLLMServer.post; the steering tests send their own key
    return srv
# ---- end of plasticity steering fixtures ----


# ---- plasticity online-training fixtures (training work; additions only, keep as one block) ----


@pytest.fixture(scope="session")
def train_root(tmp_path_factory):
    """Config, journal and checkpoints of the training test server (one per session)."""
    import training_support as ts

    root = tmp_path_factory.mktemp("training")
    # serving_duty 0.5, not the 0.25 default: the teaching test keeps a client busy throughout, so
    # training gets only that share of wall time; at 0.25 its 160 steps took ~250 s of CI. What
    # serving keeps while training is measured by scripts/bench_training.py, not here.
    return root, ts.write_config(root, serving_duty=0.5)


@pytest.fixture
def train_server(vllm_servers, tmp_path_factory, train_root):
    """qwen3-tiny, float32, compiled mode, plugin + [training] enabled + API key + dev mode (self-check RPCs)."""
    import training_support as ts

    root, cfg = train_root
    env = {**ts.plugin_env(cfg), "VLLM_SERVER_DEV_MODE": "1"}
    srv = _steering_server(vllm_servers, tmp_path_factory, ("train-qwen3",), env, extra_args=("--api-key", ts.API_KEY))
    srv.served_model_name = srv.model
    srv.train_root = root
    return srv


LORA_SLOTS, LORA_RANK = 2, 64


@pytest.fixture(scope="session")
def trained_snapshots(tmp_path_factory):
    """Snapshot folders of qwen3-tiny trained on the behaviours (name -> frozen copy), left by
    tests/training/test_snapshot_serving.py for later servers of the same model and trainable set, so the
    LoRA test does not retrain A and B (~3 min); a test run without it trains them itself."""
    import shutil

    class Trained(dict):
        def keep(self, name, folder):
            dst = tmp_path_factory.mktemp("trained-snapshots") / name
            shutil.copytree(folder, dst)
            self[name] = dst

    return Trained()


@pytest.fixture
def lora_server(vllm_servers, tmp_path_factory, trained_snapshots):
    """qwen3-tiny with training and [snapshots] serve_max: snapshots served per request as LoRA adapters."""
    import shutil

    import training_support as ts

    key = ("lora-qwen3",)
    if srv := vllm_servers.running(key):
        return srv
    root = tmp_path_factory.mktemp("lora")
    for name, folder in trained_snapshots.items():
        shutil.copytree(folder, root / "snapshots" / name)
    cfg = ts.write_config(root, snapshot_dir=str(root / "snapshots"))
    cfg.write_text(cfg.read_text() + f"\n[snapshots]\nserve_max = {LORA_SLOTS}\nserve_max_rank = {LORA_RANK}\n")
    env = {**ts.plugin_env(cfg), "VLLM_SERVER_DEV_MODE": "1"}
    srv = _steering_server(vllm_servers, tmp_path_factory, key, env, extra_args=(
        "--api-key", ts.API_KEY, "--enable-lora", "--max-loras", str(LORA_SLOTS + 1), "--max-lora-rank", str(LORA_RANK)))
    srv.served_model_name = srv.model
    srv.root = root
    return srv
# ---- end of plasticity online-training fixtures ----
