"""V1 model runner (the CPU build's runner): fill the slot index around ``_model_forward``.

``_model_forward`` runs inside ``execute_model`` after ``input_batch.req_ids``
and ``query_start_loc`` are final (docs/design/vllm-hooks.md §2): request i owns flattened tokens
``[qsl[i], qsl[i+1])``. Extra args arrive once, with the new request, and stay
in ``runner.requests[req_id].sampling_params``.
"""

from __future__ import annotations

from vllm.v1.worker.gpu_model_runner import GPUModelRunner


def _extra_args(runner, rid):
    st = runner.requests.get(rid)
    sp = getattr(st, "sampling_params", None) if st is not None else None
    return getattr(sp, "extra_args", None) if sp is not None else None


def _wrap(orig):
    def _model_forward(self, *args, **kwargs):
        st = getattr(self, "_plasticity_steering", None)
        if st is None:
            return orig(self, *args, **kwargs)
        n = self.input_batch.num_reqs
        st.fill(self.input_batch.req_ids[:n], self.query_start_loc.np, lambda rid: _extra_args(self, rid))
        try:
            return orig(self, *args, **kwargs)
        finally:
            st.clear()

    _model_forward._plasticity = True
    return _model_forward


def install() -> None:
    if not getattr(GPUModelRunner._model_forward, "_plasticity", False):
        GPUModelRunner._model_forward = _wrap(GPUModelRunner._model_forward)
