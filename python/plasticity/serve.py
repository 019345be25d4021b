"""``plasticity serve MODEL [vllm serve args] [--config plasticity.toml]``.

``vllm serve`` with the plasticity plugins loaded: sets ``PLASTICITY_CONFIG``
(read by the API server and by every worker), names our worker extension class
(``--worker-extension-cls``) and adds our two entry points to ``VLLM_PLUGINS`` (kept
as the user set it; when unset, every installed general plugin stays enabled, since
naming any plugin turns the others off), on vLLM CPU with ``--tensor-parallel-size`` > 1 adds
what that needs (thread binding, the multiprocessing executor) unless given, then replaces this
process with vLLM's OpenAI-compatible server.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points

GENERAL = "plasticity"
ENDPOINT = "plasticity_http"
EXTENSION = "plasticity.vllm.extension.WorkerExtension"  # extension.QUALNAME (importing it needs vLLM)


def plugin_env(environ: dict[str, str], config: str | None) -> dict[str, str]:
    env = dict(environ)
    if config:
        path = os.path.abspath(config)
        if not os.path.isfile(path):
            raise SystemExit(f"plasticity serve: config file {config} not found")
        env["PLASTICITY_CONFIG"] = path
    user = env.get("VLLM_PLUGINS")
    if user is not None:
        names = [n.strip() for n in user.split(",") if n.strip()]
    else:
        names = [ep.name for ep in entry_points(group="vllm.general_plugins")]
    for n in (GENERAL, ENDPOINT):
        if n not in names:
            names.append(n)
    env["VLLM_PLUGINS"] = ",".join(names)
    return env


def split_args(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(model, config, remaining vLLM args)."""
    config, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            if i + 1 >= len(argv):
                raise SystemExit("plasticity serve: --config needs a path")
            config, i = argv[i + 1], i + 2
            continue
        if a.startswith("--config="):
            config = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    model = None
    if rest and not rest[0].startswith("-"):
        model, rest = rest[0], rest[1:]
    return model, config, rest


def lora_args(config: str | None, rest: list[str]) -> list[str]:
    """vLLM's LoRA options for ``[snapshots] serve_max`` (snapshots served as adapters), unless given."""
    from plasticity.training.config import load_snapshots

    try:
        sc = load_snapshots(config) if config else None
    except (OSError, ValueError) as e:
        raise SystemExit(f"plasticity serve: {e}") from None
    if sc is None or sc.serve_max == 0 or any(a == "--enable-lora" or a.startswith("--enable-lora=") for a in rest):
        return []
    # one slot more than served: vLLM CPU's LoRA ops read base tokens' slot index -1 as the last slot
    # (see training/adapter_routes.py, ``usable_slots``), so that slot must stay empty
    return ["--enable-lora", "--max-loras", str(sc.serve_max + 1), "--max-lora-rank", str(sc.serve_max_rank)]


def extension_args(rest: list[str]) -> list[str]:
    """vLLM's option that mixes our RPC methods into its worker class, unless the user names one
    (it must then subclass ``WorkerExtension``; the API server checks at start-up)."""
    if any(a == "--worker-extension-cls" or a.startswith("--worker-extension-cls=") for a in rest):
        return []
    return ["--worker-extension-cls", EXTENSION]


def tensor_parallel_size(rest: list[str]) -> int:
    """vLLM's ``--tensor-parallel-size``/``-tp`` from the arguments (1 when absent or unreadable:
    vLLM then reports its own error)."""
    for i, a in enumerate(rest):
        v = None
        if a in ("--tensor-parallel-size", "-tp") and i + 1 < len(rest):
            v = rest[i + 1]
        elif a.startswith("--tensor-parallel-size="):
            v = a.split("=", 1)[1]
        if v is not None:
            try:
                return max(1, int(v))
            except ValueError:
                return 1
    return 1


def cpu_tensor_parallel(env: dict[str, str], rest: list[str], cpus: list[int]) -> list[str]:
    """What vLLM CPU needs for tensor parallelism, unless the user gave it (docs/distributed.md):
    each rank's OpenMP threads bound to its own CPUs (``VLLM_CPU_OMP_THREADS_BIND``, set in
    ``env``: the allowed CPUs cut into equal contiguous groups) and the multiprocessing executor.
    Returns the arguments to add."""
    tp = tensor_parallel_size(rest)
    if tp == 1:
        return []
    if "VLLM_CPU_OMP_THREADS_BIND" not in env:
        cpus = sorted(cpus)
        if len(cpus) < tp:
            raise SystemExit(f"plasticity serve: --tensor-parallel-size {tp} needs at least {tp} CPUs, this "
                             f"process may use {len(cpus)} ({cpus}); or set VLLM_CPU_OMP_THREADS_BIND yourself")
        per = len(cpus) // tp
        groups = [cpus[r * per:(r + 1) * per] for r in range(tp)]
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
            str(g[0]) if len(g) == 1 else ",".join(map(str, g)) for g in groups)
    if any(a == "--distributed-executor-backend" or a.startswith("--distributed-executor-backend=") for a in rest):
        return []
    return ["--distributed-executor-backend", "mp"]


def _on_cpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return not torch.cuda.is_available()


def main(argv: list[str]) -> int:
    model, config, rest = split_args(argv)
    if model is None and "--model" not in rest and not any(a.startswith("--model=") for a in rest):
        raise SystemExit("usage: plasticity serve MODEL [vllm serve arguments] [--config plasticity.toml]")
    env = plugin_env(os.environ, config)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    if model is not None:
        cmd += ["--model", model]
    cmd += extension_args(rest) + lora_args(env.get("PLASTICITY_CONFIG"), rest) + rest
    if tensor_parallel_size(rest) > 1 and _on_cpu():
        cmd += cpu_tensor_parallel(env, rest, sorted(os.sched_getaffinity(0)))
    os.execve(sys.executable, cmd, env)
    return 0  # not reached
