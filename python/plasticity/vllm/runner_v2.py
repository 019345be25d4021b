"""Model Runner V2 (the GPU default): UNVERIFIED — V2 needs Triton and cannot run
on this CPU build. Written from the source of vLLM 0.32 (docs/design/vllm-hooks.md §2):

- ``add_requests`` drops ``extra_args``: stash them per request id;
- ``finish_requests``: drop the stash;
- ``prepare_inputs`` returns the step's ``InputBatch`` (``req_ids``,
  ``query_start_loc_np``): fill the slot index from it;
- ``execute_model``: reset the index afterwards so later dummy/capture runs are unsteered.
"""

from __future__ import annotations

import logging

log = logging.getLogger("vllm.plasticity.steering")  # under vllm.* so vLLM's handlers print it


def _stash(runner) -> dict:
    d = getattr(runner, "_plasticity_xargs", None)
    if d is None:
        d = runner._plasticity_xargs = {}
    return d


def install() -> None:
    try:
        from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2
    except Exception as e:  # noqa: BLE001 - V2 imports Triton; absent on CPU builds
        log.debug("plasticity: V2 runner not importable (%s); not hooked", e)
        return
    if getattr(V2.prepare_inputs, "_plasticity", False):
        return
    orig_add, orig_finish, orig_prepare, orig_exec = V2.add_requests, V2.finish_requests, V2.prepare_inputs, V2.execute_model

    def add_requests(self, scheduler_output):
        stash = _stash(self)
        for new in scheduler_output.scheduled_new_reqs:
            sp = new.sampling_params
            stash[new.req_id] = getattr(sp, "extra_args", None) if sp is not None else None
        return orig_add(self, scheduler_output)

    def finish_requests(self, scheduler_output):
        stash = _stash(self)
        gone = set(scheduler_output.finished_req_ids) | set(scheduler_output.preempted_req_ids or ())
        for rid in gone:
            stash.pop(rid, None)
        st = getattr(self, "_plasticity_steering", None)
        if st is not None:
            st.forget(gone)
        return orig_finish(self, scheduler_output)

    def prepare_inputs(self, *args, **kwargs):
        batch = orig_prepare(self, *args, **kwargs)
        st = getattr(self, "_plasticity_steering", None)
        if st is not None:
            stash = _stash(self)
            st.fill(batch.req_ids[: batch.num_reqs], batch.query_start_loc_np, stash.get)
        return batch

    def execute_model(self, *args, **kwargs):
        try:
            return orig_exec(self, *args, **kwargs)
        finally:
            st = getattr(self, "_plasticity_steering", None)
            if st is not None:
                st.clear()

    for f in (add_requests, finish_requests, prepare_inputs, execute_model):
        f._plasticity = True
    V2.add_requests, V2.finish_requests, V2.prepare_inputs, V2.execute_model = add_requests, finish_requests, prepare_inputs, execute_model
