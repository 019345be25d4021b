"""plasticity.toml values of the wrong TOML type are refused by name, never converted: a quoted
"false" must not turn training or steering admin on, 2.7 must not become rank 2, 64.0 must not become
a LoRA rank. One case per hostile value, through the same loaders the server uses."""

from __future__ import annotations

import pytest

from plasticity.steering import config as steering_config
from plasticity.training import config as training_config

TRAINING = [
    ("enabled_quoted_false", 'enabled = "false"', "training.enabled must be true or false"),
    ("enabled_integer", "enabled = 1", "training.enabled must be true or false"),
    ("stochastic_rounding_quoted", 'stochastic_rounding = "no"', "training.stochastic_rounding"),
    ("rank_fraction", "rank = 2.7", "training.rank must be an integer"),
    ("batch_size_float", "batch_size = 4.0", "training.batch_size must be an integer"),
    ("max_steps_bool", "max_steps = true", "training.max_steps must be an integer"),
    ("lr_string", 'lr = "1e-3"', "training.lr must be a finite number"),
    ("lr_nan", "lr = nan", "training.lr must be a finite number"),
    ("replay_ratio_inf", "replay_ratio = inf", "training.replay_ratio must be a finite number"),
    ("betas_string_member", 'betas = [0.9, "x"]', "training.betas must be a finite number"),
    ("betas_not_a_list", "betas = 0.9", "training.betas must be two numbers"),
    ("modules_integer_member", "modules = [1]", "training.modules must be a string or a list of strings"),
    ("scale_type_integer", "scale_type = 1", "training.scale_type must be a string"),
    ("journal_integer", "journal = 3", "training.journal must be a string"),
    ("checkpoint_every_negative", "checkpoint_every = -1", "checkpoint_every and eval_every must be ≥ 0"),
    ("eval_every_negative", "eval_every = -5", "checkpoint_every and eval_every must be ≥ 0"),
    ("weight_decay_negative", "weight_decay = -0.1", "weight_decay must be ≥ 0"),
    ("norm_growth_limit_below_one", "norm_growth_limit = 0.5", "norm_growth_limit ≥ 1"),
    ("training_not_a_table", None, "[training] must be a table"),
]


def _write(tmp_path, text: str):
    p = tmp_path / "plasticity.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("line,msg", [c[1:] for c in TRAINING], ids=[c[0] for c in TRAINING])
def test_training_value_of_the_wrong_type_is_refused(tmp_path, line, msg):
    text = 'training = "on"\n' if line is None else f"[training]\n{line}\n"
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        training_config.load(_write(tmp_path, text))


STEERING = [
    ("admin_quoted_false", 'admin = "false"', "steering.admin must be true or false"),
    ("slots_float", "slots = 32.0", "steering.slots must be an integer"),
    ("max_abs_scale_inf", "max_abs_scale = inf", "steering.max_abs_scale must be a finite number"),
    ("max_vector_norm_string", 'max_vector_norm = "big"', "steering.max_vector_norm must be a finite number"),
    ("vectors_dir_integer", "vectors_dir = 5", "steering.vectors_dir must be a string"),
    ("default_not_a_table", 'default = "calm"', r"\[steering.default\] must be a table"),
    ("default_enabled_quoted_false", '[steering.default]\nenabled = "false"\nvector = "calm"',
     "steering.default.enabled must be true or false"),
]


@pytest.mark.parametrize("line,msg", [c[1:] for c in STEERING], ids=[c[0] for c in STEERING])
def test_steering_value_of_the_wrong_type_is_refused(tmp_path, line, msg):
    with pytest.raises(ValueError, match=msg):
        steering_config.load(_write(tmp_path, f"[steering]\n{line}\n"))


@pytest.mark.parametrize("value", ["64.0", "true", '"64"'], ids=["float", "bool", "string"])
def test_lora_rank_that_only_equals_a_rank_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match="snapshots.serve_max_rank must be one of"):
        training_config.load_snapshots(_write(tmp_path, f"[snapshots]\nserve_max = 1\nserve_max_rank = {value}\n"))


def test_well_typed_values_load_as_written(tmp_path):
    p = _write(tmp_path, '[training]\nenabled = true\nlr = 1\nrank = 8\nbetas = [0, 0.5]\nmodules = "mlp"\n'
                         '[steering]\nadmin = false\nslots = 8\nmax_abs_scale = 5\n'
                         '[snapshots]\nserve_max = 2\nserve_max_rank = 16\n')
    t = training_config.load(p)
    assert (t.enabled, t.lr, t.rank, t.betas, t.modules) == (True, 1.0, 8, (0.0, 0.5), ("mlp",))
    assert isinstance(t.lr, float) and t.journal == (tmp_path / "training-journal.jsonl").resolve()
    s = steering_config.load(p)
    assert (s.admin, s.slots, s.max_abs_scale) == (False, 8, 5.0)
    assert training_config.load_snapshots(p).serve_max_rank == 16
