"""The trainable transformers view of one tensor-parallel rank: the shapes of vLLM's shards, and the
collectives a sharded forward and backward need, written out explicitly.

Why a transformers view with explicit collectives rather than vLLM's own forward: vLLM's forward
runs under inference mode on its paged KV cache, with custom kernels that have no backward, so it
cannot produce the context-frozen gradient; the transformers view (``views.py``) already does, on
vLLM's storage. Under TP each rank builds that view from a config whose head counts, MLP width and
vocabulary are divided by the TP size (so its parameters have exactly the shapes of the rank's
shards), and four operators (Megatron-LM's split of a transformer layer) make it compute the
whole model's loss and, for every shard, the block of the whole model's gradient:

- ``copy`` before a column-parallel block (attention's q/k/v, the MLP's gate/up): identity
  forward, all-reduce of the input's gradient backward (each rank's heads see all of the input);
- ``reduce`` after a row-parallel block (o, down): all-reduce of the partial outputs forward,
  identity backward;
- the vocabulary-parallel embedding: each rank looks up the ids in its rows, the sum is the lookup;
- the vocabulary-parallel LM head: ``copy`` of its input, the logits' blocks gathered forward
  and split backward;
- a replicated parameter inside a block (Qwen3's per-head ``q_norm``/``k_norm``) gets only its
  heads' part of the gradient on each rank: that gradient is summed over the ranks.

Every rank then holds the same activations between blocks and the same loss. The collectives run on
a process group of the trainer's own (``new_group``), never on vLLM's: the training thread's
collectives must not interleave with the serving step's.

Shards follow vLLM 0.32's layout: a column-parallel weight's rows ``[r·n/t, (r+1)·n/t)``, a
row-parallel weight's columns likewise, the vocabulary padded to a multiple of 64 and cut into
``t`` equal row blocks (``VocabParallelEmbedding``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

VOCAB_PADDING = 64  # vLLM's DEFAULT_VOCAB_PADDING_SIZE

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW_PARALLEL = ("o_proj", "down_proj")


class TensorParallelError(ValueError):
    pass


@dataclass
class Rank:
    """This process's place in the trainer's tensor-parallel group."""

    rank: int
    size: int
    group: Any  # a torch.distributed process group of the trainer's own

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def shard_optimizer(self, opt, named: dict[str, torch.Tensor]) -> None:
        """Declare every 2-D parameter's block to Apollo (``Apollo.shard``); 1-D ones are replicated."""
        for name, p in named.items():
            spec = shard_of(name, tuple(p.shape), self.rank, self.size)
            if spec is not None:
                axis, offset, global_shape = spec
                opt.shard(p, axis=axis, offset=offset, global_shape=global_shape, group=self.group)


def padded_vocab(vocab: int) -> int:
    return -(-vocab // VOCAB_PADDING) * VOCAB_PADDING


def local_config(hf_config, tp: int):
    """A copy of ``hf_config`` with the sizes of one rank's shards."""
    c = hf_config.__class__.from_dict(hf_config.to_dict())
    heads, kv = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    if any("linear" in str(t) for t in (getattr(c, "layer_types", None) or ())):
        raise TensorParallelError("training under tensor parallelism supports attention-only models "
                                  "(Llama, Qwen3); this one has linear-attention layers")
    if heads % tp or kv % tp:
        raise TensorParallelError(f"{heads} attention heads and {kv} key/value heads must both divide by the "
                                  f"tensor-parallel size {tp} (vLLM replicates key/value heads otherwise, "
                                  "which the trainer does not handle)")
    if c.intermediate_size % tp or padded_vocab(c.vocab_size) % tp:
        raise TensorParallelError(f"intermediate_size {c.intermediate_size} and the padded vocabulary "
                                  f"{padded_vocab(c.vocab_size)} must divide by the tensor-parallel size {tp}")
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise TensorParallelError("training under tensor parallelism does not handle biased projections")
    c.head_dim = head_dim  # fixed before the head counts change (some configs derive it)
    c.num_attention_heads, c.num_key_value_heads = heads // tp, kv // tp
    c.intermediate_size //= tp
    c.vocab_size = padded_vocab(c.vocab_size) // tp
    return c


def shard_of(name: str, local_shape: tuple[int, ...], rank: int, tp: int):
    """Where a local parameter sits in the whole tensor: ``(axis, offset, global_shape)`` with axis
    ``"rows"``/``"cols"``, or None for a replicated one (norms). Embeddings are row blocks."""
    leaf = name.split(".")[-2] if name.endswith(".weight") else name.split(".")[-1]
    if len(local_shape) != 2:
        return None
    rows, cols = local_shape
    if leaf in COLUMN_PARALLEL or leaf in ("embed_tokens", "lm_head"):
        return "rows", rank * rows, (rows * tp, cols)
    if leaf in ROW_PARALLEL:
        return "cols", rank * cols, (rows, cols * tp)
    return None


# bytes this process put into the view's collectives (forward and backward), for benchmarks
sent_bytes = 0


def _count(t: torch.Tensor) -> None:
    global sent_bytes
    sent_bytes += t.numel() * t.element_size()


class _Copy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        _count(g)
        dist.all_reduce(g, group=ctx.group)
        return g, None


class _Reduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        _count(x)
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, g):
        return g, None


class _GatherLast(torch.autograd.Function):
    """Concatenate every rank's block along the last dimension; backward keeps this rank's block."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group, ctx.rank, ctx.n = group, dist.get_rank(group), x.shape[-1]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        _count(x)
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, g):
        return g[..., ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n].contiguous(), None


def copy_to_ranks(x, group):
    return _Copy.apply(x, group)


def reduce_from_ranks(x, group):
    return _Reduce.apply(x, group)


def gather_last(x, group):
    return _GatherLast.apply(x, group)


class VocabParallelEmbedding(torch.nn.Module):
    """This rank's rows of the embedding; ids outside them look up zeros, the sum over ranks is the
    whole lookup."""

    def __init__(self, weight: torch.nn.Parameter, start: int, group):
        super().__init__()
        self.weight, self.start, self.group = weight, start, group

    def forward(self, ids):
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = torch.nn.functional.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_ranks(out, self.group)


class VocabParallelHead(torch.nn.Module):
    """This rank's block of the logits, gathered; the padding columns are cut off."""

    def __init__(self, weight: torch.nn.Parameter, vocab: int, group):
        super().__init__()
        self.weight, self.vocab, self.group = weight, vocab, group

    def forward(self, h):
        # h is the same on every rank; its gradient is the sum of every rank's block of the logits'
        return gather_last(torch.nn.functional.linear(copy_to_ranks(h, self.group), self.weight),
                           self.group)[..., :self.vocab]


def parallelize(model, vocab: int, group) -> None:
    """Insert the collectives into a transformers decoder whose parameters are one rank's shards
    (built from :func:`local_config`). ``vocab``: the whole model's vocabulary size."""
    rank = dist.get_rank(group)
    layers = model.model.layers
    for layer in layers:
        for block in (layer.self_attn, layer.mlp):
            block.register_forward_pre_hook(_copy_input(group), with_kwargs=True)
            block.register_forward_hook(_reduce_output(group))
            for name, p in block.named_parameters():
                if p.requires_grad and name.split(".")[0] not in COLUMN_PARALLEL + ROW_PARALLEL:
                    # replicated but used by this rank's heads only (Qwen3's q_norm, k_norm): the
                    # whole gradient is the sum of the ranks' parts
                    p.register_hook(_sum_over(group))
    emb = model.model.embed_tokens
    model.model.embed_tokens = VocabParallelEmbedding(emb.weight, rank * emb.weight.shape[0], group)
    model.lm_head = VocabParallelHead(model.lm_head.weight, vocab, group)
    model.config.vocab_size = vocab  # the loss and generation see the whole vocabulary


def _sum_over(group):
    def hook(g):
        g = g.contiguous().clone()
        _count(g)
        dist.all_reduce(g, group=group)
        return g
    return hook


def _copy_input(group):
    def hook(module, args, kwargs):
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": copy_to_ranks(kwargs["hidden_states"], group)}
        else:
            args = (copy_to_ranks(args[0], group), *args[1:])
        return args, kwargs
    return hook


def _reduce_output(group):
    def hook(module, args, out):
        if isinstance(out, tuple):
            return (reduce_from_ranks(out[0], group), *out[1:])
        return reduce_from_ranks(out, group)
    return hook


def shard_state_dict(full: dict[str, torch.Tensor], hf_config, rank: int, tp: int) -> dict[str, torch.Tensor]:
    """Cut a whole model's tensors (transformers names) into rank ``rank``'s shards, as vLLM loads
    them: for tests and for loading a whole snapshot into a sharded server."""
    vocab_rows = padded_vocab(hf_config.vocab_size) // tp
    out = {}
    for name, t in full.items():
        leaf = name.split(".")[-2] if name.endswith(".weight") else name.split(".")[-1]
        if leaf in ("embed_tokens", "lm_head"):
            pad = torch.zeros(padded_vocab(t.shape[0]) - t.shape[0], *t.shape[1:], dtype=t.dtype)
            out[name] = torch.cat([t, pad])[rank * vocab_rows:(rank + 1) * vocab_rows].contiguous()
        elif leaf in COLUMN_PARALLEL:
            n = t.shape[0] // tp
            out[name] = t[rank * n:(rank + 1) * n].contiguous()
        elif leaf in ROW_PARALLEL:
            n = t.shape[1] // tp
            out[name] = t[:, rank * n:(rank + 1) * n].contiguous()
        else:
            out[name] = t.clone()
    return out


class WholeParam:
    """The whole tensor behind one rank's block, for code written for whole tensors (snapshots,
    rollback, merges, the base weights): ``detach()`` gathers the blocks from every rank (a
    collective: every rank must read the same tensors in the same order), ``copy_`` writes this
    rank's block of a whole tensor (local, safe under the serving lock). A replicated parameter
    (``spec`` None) is its own whole."""

    def __init__(self, shard: torch.Tensor, spec, rows: int | None, rank: int, size: int, group):
        self.shard, self.spec, self.rank, self.size, self.group = shard, spec, rank, size, group
        if spec is None:
            self.shape = tuple(shard.shape)
        else:
            gm, gn = spec[2]
            self.shape = (rows if rows is not None else gm, gn)  # the vocabulary without its padding
        self.dtype, self.device = shard.dtype, shard.device

    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def detach(self) -> torch.Tensor:
        if self.spec is None:
            return self.shard.detach()
        parts = [torch.empty_like(self.shard) for _ in range(self.size)]
        dist.all_gather(parts, self.shard.detach().contiguous(), group=self.group)
        whole = torch.cat(parts, dim=0 if self.spec[0] == "rows" else 1)
        return whole[: self.shape[0]] if self.spec[0] == "rows" else whole

    @torch.no_grad()
    def copy_(self, whole: torch.Tensor) -> None:
        if tuple(whole.shape) != self.shape:
            raise ValueError(f"shape {tuple(whole.shape)} != {self.shape}")
        if self.spec is None:
            self.shard.copy_(whole)
            return
        axis, offset, _ = self.spec
        n = self.shard.shape[0] if axis == "rows" else self.shard.shape[1]
        if axis == "rows":
            block = whole[offset: offset + n]
            if block.shape[0] < n:  # the padding rows of a vocabulary-parallel block stay zero
                block = torch.cat([block, whole.new_zeros(n - block.shape[0], *whole.shape[1:])])
        else:
            block = whole[:, offset: offset + n]
        self.shard.copy_(block)


def whole_params(named: dict[str, torch.Tensor], tp: Rank, vocab: int) -> dict[str, WholeParam]:
    """``{name: WholeParam}`` for a rank's trainable parameters (``vocab``: the whole model's)."""
    out = {}
    for name, p in named.items():
        spec = shard_of(name, tuple(p.shape), tp.rank, tp.size)
        leaf = name.split(".")[-2] if name.endswith(".weight") else name.split(".")[-1]
        rows = vocab if leaf in ("embed_tokens", "lm_head") else None
        out[name] = WholeParam(p, spec, rows, tp.rank, tp.size, tp.group)
    return out


def whole_shapes(model, tp: Rank, vocab: int) -> dict[str, tuple[int, ...]]:
    """The whole model's parameter shapes, from a rank's view (for the snapshot fingerprint)."""
    return {n: w.shape for n, w in whole_params(dict(model.named_parameters()), tp, vocab).items()}
