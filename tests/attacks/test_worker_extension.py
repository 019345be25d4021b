"""The plugin's worker RPCs come from one extension class named by ``--worker-extension-cls``.

Hostile or careless set-ups: a server started without the class, or with a class that is not
ours, must refuse to start; the production class must not carry the test hooks that write the
live weights; the training RPCs must not start a trainer in a server without ``[training]``.
"""

from __future__ import annotations

import types

import pytest

from plasticity.serve import EXTENSION, extension_args
from plasticity.vllm import extension, training
from plasticity.vllm.extension import QUALNAME, WorkerExtension

TEST_HOOKS = ("plasticity_train_selfcheck", "plasticity_train_scale_param", "plasticity_train_digest")


@pytest.mark.parametrize("qualname", [None, ""], ids=["absent", "empty"])
def test_api_server_refuses_workers_without_the_extension(qualname):
    with pytest.raises(RuntimeError, match="plasticity serve"):
        extension.require(qualname)


@pytest.mark.parametrize("qualname", ["builtins.dict", "collections.OrderedDict", "os.path.join"],
                         ids=["other_class", "other_subclassable", "a_function"])
def test_api_server_refuses_an_extension_that_is_not_ours(qualname):
    with pytest.raises(RuntimeError, match="not a subclass"):
        extension.require(qualname)


def test_plain_vllm_without_plasticity_config_or_extension_keeps_serving_with_plasticity_off():
    assert extension.active(None, None) is False
    assert extension.active("", "") is False


@pytest.mark.parametrize("qualname", [None, ""], ids=["absent", "empty"])
def test_a_plasticity_config_without_the_extension_is_refused(qualname):
    with pytest.raises(RuntimeError, match="plasticity serve"):
        extension.active(qualname, "/etc/plasticity.toml")


def test_a_foreign_extension_is_refused_even_without_a_config():
    with pytest.raises(RuntimeError, match="not a subclass"):
        extension.active("builtins.dict", None)


def test_our_extension_turns_plasticity_on():
    assert extension.active(QUALNAME, None) is True
    assert extension.active(QUALNAME, "/etc/plasticity.toml") is True


def test_our_extension_and_subclasses_are_accepted():
    extension.require(QUALNAME)
    extension.require("worker_test_extension.WorkerExtensionForTests")  # tests/ is on sys.path under pytest


def test_production_extension_has_no_test_hooks():
    for name in TEST_HOOKS:
        assert not hasattr(WorkerExtension, name), name
    from worker_test_extension import WorkerExtensionForTests

    for name in TEST_HOOKS:
        assert callable(getattr(WorkerExtensionForTests, name)), name


def test_extension_names_do_not_clash_with_vllms_worker():
    # vLLM asserts this before mixing the class in (vllm/v1/worker/worker_base.py); a clash would
    # stop every worker from starting
    from vllm.v1.worker.cpu_worker import CPUWorker

    from worker_test_extension import WorkerExtensionForTests

    for cls in (WorkerExtension, WorkerExtensionForTests):
        names = [a for a in dir(cls) if not a.startswith("__")]
        assert names and all(n.startswith("plasticity_") for n in names), names
        assert not [n for n in names if hasattr(CPUWorker, n)]


def test_training_rpc_does_not_start_a_trainer_without_training_enabled(monkeypatch):
    monkeypatch.setattr(training, "_INSTALLED", False)
    worker = types.SimpleNamespace(model_runner=types.SimpleNamespace())
    res = WorkerExtension.plasticity_train_start(worker)
    assert res["ok"] is False and "not enabled" in res["error"]
    assert not hasattr(worker.model_runner, "_plasticity_training")
    res = WorkerExtension.plasticity_tv_submit(worker, "restore", {"to": "base"})
    assert res["ok"] is False and "not started" in res["error"]


def test_plasticity_serve_names_the_extension_unless_the_user_does():
    assert EXTENSION == QUALNAME
    assert extension_args(["--dtype", "float32"]) == ["--worker-extension-cls", QUALNAME]
    assert extension_args(["--worker-extension-cls", "mine.Ext"]) == []
    assert extension_args(["--worker-extension-cls=mine.Ext"]) == []
