"""Bad `plasticity steer train-in` arguments: exit 2 with a clear message, before the server is contacted
(the URL points nowhere, so anything that got as far as HTTP would fail differently)."""

import pytest

from plasticity.cli import main
from plasticity.steering.train_in import train_in

BASE = ["steer", "train-in", "--server", "http://127.0.0.1:9", "--vector", "v", "--scale", "1",
        "--prompts", "p.txt", "--heldout", "h.txt"]


@pytest.mark.parametrize("extra,msg", [
    (["--until-kl-ratio", "1.5"], "--until-kl-ratio must be in"),
    (["--until-kl-ratio", "0"], "--until-kl-ratio must be in"),
    (["--until-kl-ratio", "nan"], "--until-kl-ratio must be in"),
    (["--max-rounds", "0"], "--max-rounds"),
    (["--epochs", "0"], "--epochs"),
    (["--max-tokens", "0"], "--max-tokens"),
], ids=["ratio_above_one", "ratio_zero", "ratio_nan", "zero_rounds", "zero_epochs", "zero_tokens"])
def test_bad_train_in_arguments(capsys, extra, msg):
    assert main(BASE + extra) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.parametrize("kw", [{"until": 1.0}, {"until": -0.1}, {"max_rounds": 0}, {"epochs": 0}],
                         ids=["until_one", "until_negative", "no_rounds", "no_epochs"])
def test_bad_train_in_api_arguments(kw):
    with pytest.raises(ValueError):
        train_in(None, "v", 1.0, ["p"], ["h"], **kw)
