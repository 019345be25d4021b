"""A trainable transformers module whose parameters are zero-copy views of
vLLM's live tensors (one copy of the weights in memory).

The transformers model of the same architecture is built on the meta device;
every parameter is then replaced by an ``nn.Parameter`` aliasing the storage
of the matching vLLM parameter. vLLM fuses some projections into one matrix
(``qkv_proj``, ``gate_up_proj``, ``in_proj_qkvz``, ``in_proj_ba``); their
components are *row slices* of the fused weight (a row slice of a contiguous
matrix is contiguous, so Apollo's in-place Rust step writes straight into
vLLM's memory). Buffers that are not weights (rotary ``inv_freq``) are
materialised from the config.
"""

from __future__ import annotations

import fnmatch
import logging

import torch

log = logging.getLogger("vllm.plasticity.training")

# vLLM fused parameter -> the transformers modules it stacks, in row order.
PACKED = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "in_proj_qkvz": ("in_proj_qkv", "in_proj_z"),
    "in_proj_ba": ("in_proj_b", "in_proj_a"),
}
_PART_OF = {part: (fused, i) for fused, parts in PACKED.items() for i, part in enumerate(parts)}

LINEAR_LEAVES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                 "in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"}
PRESETS = {
    "all-linear": lambda n, leaf, mod: leaf in LINEAR_LEAVES and n.endswith(".weight") and ".layers." in n,
    "attention": lambda n, leaf, mod: ((".self_attn." in n or ".linear_attn." in n) and leaf in LINEAR_LEAVES),
    "mlp": lambda n, leaf, mod: ".mlp." in n and leaf in LINEAR_LEAVES,
    "gdn": lambda n, leaf, mod: ".linear_attn." in n and (leaf in LINEAR_LEAVES or leaf in ("A_log", "dt_bias")),
    "gdn-gates": lambda n, leaf, mod: ".linear_attn." in n and leaf in ("A_log", "dt_bias", "in_proj_a", "in_proj_b"),
    "norms": lambda n, leaf, mod: "norm" in leaf,
    "embeddings": lambda n, leaf, mod: "embed" in leaf or leaf == "lm_head",
    "all": lambda n, leaf, mod: True,
}


def _leaf_of(name: str) -> str:
    # "model.layers.0.self_attn.q_proj.weight" -> "q_proj"; "...linear_attn.A_log" -> "A_log"
    parts = name.split(".")
    return parts[-2] if parts[-1] in ("weight", "bias") and len(parts) > 1 else parts[-1]


def select(names, patterns) -> set[str]:
    """Trainable parameter names: presets, leaf names (``q_proj``), or globs on full names."""
    out: set[str] = set()
    for pat in patterns:
        if pat in PRESETS:
            out |= {n for n in names if PRESETS[pat](n, _leaf_of(n), None)}
        elif any(c in pat for c in "*?["):
            out |= {n for n in names if fnmatch.fnmatchcase(n, pat)}
        else:
            hit = {n for n in names if _leaf_of(n) == pat or n == pat}
            if not hit:
                raise ValueError(f"training.modules: {pat!r} matches no parameter "
                                 f"(presets: {sorted(PRESETS)}; or a leaf name such as 'q_proj')")
            out |= hit
    return out


def build_meta_model(hf_config):
    from transformers import AutoModelForCausalLM

    hf_config = hf_config.__class__.from_dict(hf_config.to_dict())  # private copy
    hf_config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return model


def _materialise_buffers(model, hf_config) -> None:
    for mname, mod in list(model.named_modules()):
        if any(b.is_meta for b in mod.buffers(recurse=False)):
            if "rotary" in type(mod).__name__.lower():
                with torch.device("cpu"):
                    new = type(mod)(config=mod.config) if hasattr(mod, "config") else None
                if new is None:
                    raise RuntimeError(f"cannot materialise buffers of {mname}")
                parent, _, child = mname.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, new)
            else:
                raise RuntimeError(f"plasticity: module {mname} has meta buffers that are not rotary tables")


def _find_live(live: dict, name: str):
    for cand in (name, "language_model." + name, name.removeprefix("model."),
                 "model.language_model." + name.removeprefix("model.")):
        if cand in live:
            return cand
        # with --enable-lora vLLM wraps each linear layer and keeps its weight in `base_layer`
        mod, _, pname = cand.rpartition(".")
        if mod and f"{mod}.base_layer.{pname}" in live:
            return f"{mod}.base_layer.{pname}"
    return None


def bind(model, live: dict[str, torch.Tensor], hf_config, trainable: set[str], device="cpu"):
    """Replace every parameter of ``model`` (meta) by a view of ``live`` (vLLM's
    ``named_parameters``). Returns (bound names -> (vllm name, row offset)), and
    the names that had to stay frozen (e.g. a CPU-packed conv weight)."""
    meta_shapes = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    where: dict[str, tuple[str, int]] = {}
    frozen_forced: list[str] = []
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    for name, shape in meta_shapes.items():
        if tied and name == "lm_head.weight":
            continue
        mod_path, _, pname = name.rpartition(".")
        leaf = _leaf_of(name)
        src = _find_live(live, name)
        offset = 0
        if src is not None:
            t = live[src].detach()
            if tuple(t.shape) != shape:
                if leaf == "conv1d":  # CPU AVX512-BF16/AMX repacks the conv weight; vLLM keeps an unpacked copy
                    conv = live.get("__module__:" + src.rpartition(".")[0])
                    unpacked = getattr(conv, "_cpu_unpacked_conv_weight", None)
                    if unpacked is None or unpacked.numel() != t.numel() and unpacked.numel() != int(torch.tensor(shape).prod()):
                        raise RuntimeError(f"{name}: vLLM shape {tuple(t.shape)} != {shape}")
                    t = unpacked.detach().view(shape)
                    frozen_forced.append(name)  # serving reads the packed copy: training it would not be seen
                else:
                    raise RuntimeError(f"plasticity: {name}: vLLM shape {tuple(t.shape)} != transformers {shape}")
        elif leaf in _PART_OF:
            fused, idx = _PART_OF[leaf]
            parent = mod_path.rpartition(".")[0]
            src = _find_live(live, f"{parent}.{fused}.{pname}")
            if src is None:
                raise RuntimeError(f"plasticity: no vLLM tensor for {name} (looked for {parent}.{fused}.{pname})")
            parts = [f"{parent}.{p}.{pname}" for p in PACKED[fused]]
            offset = sum(meta_shapes[p][0] for p in parts[:idx])
            total = sum(meta_shapes[p][0] for p in parts if p in meta_shapes)
            base = live[src].detach()
            if base.shape[0] != total or tuple(base.shape[1:]) != shape[1:]:
                raise RuntimeError(f"plasticity: {src} has shape {tuple(base.shape)}, expected rows {total} x {shape[1:]}"
                                   " (packed/empty weight? the CPU no-repack patch must be active)")
            t = base[offset: offset + shape[0]]
        else:
            raise RuntimeError(f"plasticity: no vLLM tensor for transformers parameter {name}")
        if t.numel() == 0 or t.data_ptr() == 0:
            raise RuntimeError(f"plasticity: vLLM tensor {src} is empty (CPU weight repacking not disabled?)")
        if not t.is_contiguous():
            raise RuntimeError(f"plasticity: view for {name} is not contiguous")
        owner = model.get_submodule(mod_path) if mod_path else model
        req = name in trainable and name not in frozen_forced
        owner._parameters[pname] = torch.nn.Parameter(t, requires_grad=req)
        where[name] = (src, offset)
    if tied and "lm_head.weight" in meta_shapes:
        model.lm_head.weight = model.get_submodule("model.embed_tokens").weight
    _materialise_buffers(model, hf_config)
    model.eval()  # no dropout
    return where, frozen_forced


def live_params(vllm_model) -> dict[str, torch.Tensor]:
    live = dict(vllm_model.named_parameters())
    for n, m in vllm_model.named_modules():
        if hasattr(m, "_cpu_unpacked_conv_weight"):
            live["__module__:" + n] = m
    return live


def build_trainable(vllm_model, hf_config, patterns) -> tuple[torch.nn.Module, dict, list[str]]:
    """(transformers module on vLLM's storage, {hf name: (vllm name, row offset)}, trainable names)."""
    model = build_meta_model(hf_config)
    names = [n for n, _ in model.named_parameters()]
    trainable = select(names, patterns)
    live = live_params(vllm_model)
    where, forced = bind(model, live, model.config, trainable)
    if forced:
        log.warning("plasticity: %d parameter(s) kept frozen because vLLM serves a repacked copy: %s",
                    len(forced), forced[:4])
    names = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    return model, where, names


def check_zero_copy(model, live: dict, where: dict) -> list[str]:
    """Names whose view does not alias vLLM's storage at the expected address (should be empty)."""
    bad = []
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, (src, off) in where.items():
        p, base = params[name], live[src]
        row = base.stride(0) * base.element_size() if base.dim() > 1 else base.element_size()
        if p.untyped_storage().data_ptr() != base.untyped_storage().data_ptr() or p.data_ptr() != base.data_ptr() + off * row:
            if not name.endswith("conv1d.weight"):
                bad.append(name)
    return bad
