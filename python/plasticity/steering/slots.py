"""Worker-side steering state: registered vectors, per-layer slot tables, the
token→slot index, and the decoder-layer hooks that call the Rust op.

Buffers are allocated once at model load and only ever written in place
(``copy_``/``zero_``), so compiled graphs (and, on GPU, CUDA graphs) keep
reading the same addresses. Slot 0 of every table is the zero row ("not
steered"); each distinct steering config active in a batch gets one slot,
and its table rows are written only when the config first takes the slot.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import torch

from plasticity.steering.spec import SIG_KEY, SteerSpec, SteeringError, parse_xargs, verify

log = logging.getLogger("vllm.plasticity.steering")  # under vllm.* so vLLM's handlers print it

DEFAULT_SLOTS = 32


def find_decoder_layers(model: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList:
    """The model's decoder-block list: the ModuleList named ``*layers`` with one entry per block."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and name.split(".")[-1] in ("layers", "h") and len(mod) == num_layers:
            if best is None or name.count(".") < best[0].count("."):
                best = (name, mod)
    if best is None:
        raise RuntimeError(f"plasticity: no decoder-layer list with {num_layers} entries found in {type(model).__name__}")
    return best[1]


def _steer_hook(mod, args, out):
    # Decoder layers return (hidden, residual); the stream after the block is
    # their sum, so adding to the residual steers it (docs/design/vllm-hooks.md §4). No branching on
    # runtime state: the op reads the buffers the runner just filled.
    if isinstance(out, tuple) and len(out) == 2 and out[1] is not None:
        r = out[1]
        torch.ops.plasticity.steer_add_(r, mod._plasticity_table, mod._plasticity_slots[: r.shape[0]])
    return out


class SteeringState:
    def __init__(self, model: torch.nn.Module, *, hidden: int, num_layers: int, max_tokens: int,
                 dtype: torch.dtype, device: torch.device, num_slots: int = DEFAULT_SLOTS,
                 max_abs_scale: float = 1000.0):
        from plasticity.steering import torch_op

        torch_op.register()
        if device.type == "cuda":
            # Compile and load the kernel now, at model load: never first inside a CUDA-graph capture.
            from plasticity import cuda

            cuda.kernels_ready(device.index if device.index is not None else torch.cuda.current_device())
        self.hidden, self.num_layers, self.dtype, self.device = hidden, num_layers, dtype, device
        self.num_slots = num_slots
        self.max_abs_scale = max_abs_scale
        self.vectors: dict[str, dict[int, torch.Tensor]] = {}  # name -> layer -> f32 [H] (CPU)
        self.tables = [torch.zeros(num_slots, hidden, dtype=dtype, device=device) for _ in range(num_layers)]
        # Host-side index the runner writes; on CPU it *is* the device buffer.
        self.slots = torch.zeros(max_tokens, dtype=torch.int32, device=device)
        self.slots_host = self.slots if device.type == "cpu" else torch.zeros(max_tokens, dtype=torch.int32).pin_memory()
        self.slots_np = self.slots_host.numpy()
        self.slot_of: OrderedDict[tuple, int] = OrderedDict()  # config key -> slot (LRU)
        self.spec_cache: dict[str, SteerSpec | None] = {}  # req_id -> parsed spec
        self.dirty_n = 0
        # The key the API server signs validated flags with (set by the first API server to ask):
        # until it is set, and for any flag without a valid signature, nothing is steered.
        self.request_key: bytes | None = None
        self.layers = find_decoder_layers(model, num_layers)
        for i, layer in enumerate(self.layers):
            layer.register_buffer("_plasticity_table", self.tables[i], persistent=False)
            layer.register_buffer("_plasticity_slots", self.slots, persistent=False)
            layer.register_forward_hook(_steer_hook)
        log.info("plasticity: steering hooks on %d decoder layers (hidden %d, %d slots, %d tokens)",
                 num_layers, hidden, num_slots, max_tokens)

    # ---- registry (called through collective_rpc, between steps) ----
    def register_vector(self, name: str, layers: list[int], data: bytes, replace: bool = False) -> dict:
        arr = np.frombuffer(data, dtype=np.float32)
        if arr.size != len(layers) * self.hidden:
            raise SteeringError(f"vector {name!r}: {arr.size} values for {len(layers)} layers of hidden size {self.hidden}")
        if not np.isfinite(arr).all():
            raise SteeringError(f"vector {name!r} contains NaN or Inf")
        bad = [l for l in layers if not 0 <= l < self.num_layers]
        if bad:
            raise SteeringError(f"vector {name!r}: layers {bad} outside 0..{self.num_layers - 1}")
        if name in self.vectors and not replace:
            raise SteeringError(f"vector {name!r} is already registered")
        rows = torch.from_numpy(arr.copy()).view(len(layers), self.hidden)
        self.vectors[name] = {l: rows[i] for i, l in enumerate(layers)}
        self._invalidate()
        return {"name": name, "layers": sorted(layers)}

    def delete_vector(self, name: str) -> bool:
        found = self.vectors.pop(name, None) is not None
        self._invalidate()
        return found

    def _invalidate(self) -> None:
        # Cached slot rows may hold a replaced/deleted vector: forget them all.
        self.slot_of.clear()
        self.spec_cache.clear()

    def agree_request_key(self, proposed: bytes) -> bytes:
        """Take ``proposed`` as the signing key unless one is set already; return the key in force."""
        if self.request_key is None:
            if not isinstance(proposed, (bytes, bytearray)) or len(proposed) < 16:
                raise SteeringError("the request key must be at least 16 bytes")
            self.request_key = bytes(proposed)
        return self.request_key

    # ---- per step ----
    def spec_for(self, req_id: str, extra_args) -> SteerSpec | None:
        if req_id in self.spec_cache:
            return self.spec_cache[req_id]
        spec = None
        try:
            s = parse_xargs(extra_args, max_abs_scale=self.max_abs_scale, signed=True) if extra_args else None
            if s is not None and not verify(self.request_key, extra_args):
                # Not rewritten by the API server's middleware (another route, or forged): its K/V
                # would not be salted, so it must not be steered.
                raise SteeringError(f"steering flag without a valid {SIG_KEY} (sent through a route that "
                                    "does not validate steering)")
            if isinstance(s, SteerSpec):
                missing = [n for n in s.names if n not in self.vectors]
                if missing:
                    raise SteeringError(f"unknown vector(s) {missing}")
                spec = s
        except SteeringError as e:
            # The API server refuses these; anything that slips past (another
            # endpoint, a race with DELETE) runs unsteered rather than crash the engine.
            log.warning("plasticity: request %s not steered: %s", req_id, e)
        if len(self.spec_cache) > 4096:
            self.spec_cache.clear()
        self.spec_cache[req_id] = spec
        return spec

    def _slot(self, spec: SteerSpec, in_use: set[int]) -> int:
        key = spec.key
        s = self.slot_of.get(key)
        if s is not None:
            self.slot_of.move_to_end(key)
            return s
        used = set(self.slot_of.values())
        free = [i for i in range(1, self.num_slots) if i not in used]
        if free:
            s = free[0]
        else:  # evict the least recently used config not in this batch
            victim = next((k for k, v in self.slot_of.items() if v not in in_use), None)
            if victim is None:
                return 0  # more distinct configs in one batch than slots: run unsteered (logged)
            s = self.slot_of.pop(victim)
        self._write_rows(s, spec)
        self.slot_of[key] = s
        return s

    def _write_rows(self, s: int, spec: SteerSpec) -> None:
        for layer in range(self.num_layers):
            row = torch.zeros(self.hidden, dtype=torch.float32)
            if spec.layers is None or layer in spec.layers:
                for name, scale in zip(spec.names, spec.scales):
                    v = self.vectors[name].get(layer)
                    if v is not None:
                        row += scale * v
            # Sum in f32, round to the model dtype once.
            self.tables[layer][s].copy_(row.to(self.dtype))

    def fill(self, req_ids: list[str], qsl: np.ndarray, get_extra_args) -> None:
        """Write the token→slot index for this forward (tables only change on new configs)."""
        if self.dirty_n:
            self.slots_np[: self.dirty_n] = 0
            self.dirty_n = 0
        if not self.vectors:
            return
        in_use: set[int] = set()
        for i, rid in enumerate(req_ids):
            if rid is None:
                continue
            spec = self.spec_for(rid, get_extra_args(rid))
            if spec is None:
                continue
            s = self._slot(spec, in_use)
            if s == 0:
                log.warning("plasticity: more than %d steering configs in one batch; %s runs unsteered", self.num_slots - 1, rid)
                continue
            in_use.add(s)
            a, b = int(qsl[i]), int(qsl[i + 1])
            self.slots_np[a:b] = s
            self.dirty_n = max(self.dirty_n, b)
        if self.dirty_n and self.slots_host is not self.slots:
            self.slots[: self.dirty_n].copy_(self.slots_host[: self.dirty_n], non_blocking=False)  # sync: the host buffer is rewritten next step

    def clear(self) -> None:
        """After the forward: all tokens back to slot 0, so dummy/warm-up runs are never steered."""
        if self.dirty_n:
            self.slots_np[: self.dirty_n] = 0
            if self.slots_host is not self.slots:
                self.slots[: self.dirty_n].zero_()
            self.dirty_n = 0

    def forget(self, req_ids) -> None:
        for r in req_ids:
            self.spec_cache.pop(r, None)

    def describe(self) -> dict:
        return {"hidden_size": self.hidden, "num_layers": self.num_layers, "dtype": str(self.dtype).replace("torch.", ""),
                "slots": self.num_slots, "vectors": {n: sorted(v) for n, v in self.vectors.items()}}
