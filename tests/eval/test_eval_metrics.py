"""Continual-learning metrics and perplexity helpers against numbers computed by hand.

R[i][j] = score on task j after training session i; b[j] = untrained model on task j.
Each expected value below is worked out in the comment next to it.
"""

from __future__ import annotations

import math

import pytest

from plasticity.eval import metrics as M
from plasticity.eval.metrics import MetricsError

# 3 tasks. Rows: after session 0, 1, 2.
R3 = [[0.9, 0.2, 0.1],
      [0.7, 0.8, 0.3],
      [0.6, 0.6, 0.9]]
B3 = [0.1, 0.1, 0.2]


def test_three_by_three_by_hand():
    m = M.continual_metrics(R3, B3, task_names=["a", "b", "c"])
    # ACC = (0.6 + 0.6 + 0.9) / 3 = 2.1 / 3
    assert m["overall_performance"] == pytest.approx(0.7)
    # LA = (0.9 + 0.8 + 0.9) / 3
    assert m["learning_accuracy"] == pytest.approx(2.6 / 3)
    # after session k, mean over tasks 0..k: 0.9 ; (0.7 + 0.8) / 2 ; 2.1 / 3
    assert m["acc_curve"] == pytest.approx([0.9, 0.75, 0.7])
    # BWT = ((0.6 - 0.9) + (0.6 - 0.8)) / 2 = (-0.3 - 0.2) / 2
    assert m["backward_transfer"] == pytest.approx(-0.25)
    # FWT = ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.2 - 0.1) + (0.3 - 0.2)) / 2
    assert m["forward_transfer"] == pytest.approx(0.1)
    # f_a = max(0.9, 0.7) - 0.6 = 0.3 ; f_b = max(0.2, 0.8) - 0.6 = 0.2
    assert m["forgetting_per_task"] == pytest.approx({"a": 0.3, "b": 0.2})
    assert m["forgetting"] == pytest.approx(0.25)
    assert m["worst_forgetting"] == pytest.approx(0.3)
    assert m["worst_forgetting_task"] == "a"
    assert m["T"] == 3 and m["tasks"] == ["a", "b", "c"] and m["scores"] == R3 and m["baseline"] == B3


def test_single_functions_match_the_dict():
    assert M.overall_performance(R3) == pytest.approx(0.7)
    assert M.backward_transfer(R3) == pytest.approx(-0.25)
    assert M.forward_transfer(R3, B3) == pytest.approx(0.1)
    assert M.forgetting_per_task(R3) == pytest.approx([0.3, 0.2])
    assert M.forgetting(R3) == pytest.approx(0.25)
    assert M.worst_forgetting(R3) == pytest.approx(0.3)
    assert M.learning_accuracy(R3) == pytest.approx(2.6 / 3)
    assert M.acc_curve(R3) == pytest.approx([0.9, 0.75, 0.7])


def test_four_tasks_forgetting_takes_the_best_earlier_row():
    R = [[0.8, 0.1, 0.0, 0.2],
         [0.6, 0.9, 0.1, 0.2],
         [0.7, 0.5, 0.7, 0.3],
         [0.4, 0.6, 0.5, 0.9]]
    b = [0.0, 0.1, 0.0, 0.1]
    # f0 = max(0.8, 0.6, 0.7) - 0.4 = 0.4 ; f1 = max(0.1, 0.9, 0.5) - 0.6 = 0.3 ; f2 = max(0.0, 0.1, 0.7) - 0.5 = 0.2
    assert M.forgetting_per_task(R) == pytest.approx([0.4, 0.3, 0.2])
    assert M.forgetting(R) == pytest.approx(0.3)
    assert M.worst_forgetting(R) == pytest.approx(0.4)
    # BWT = ((0.4 - 0.8) + (0.6 - 0.9) + (0.5 - 0.7)) / 3 = -0.9 / 3
    assert M.backward_transfer(R) == pytest.approx(-0.3)
    # ACC = (0.4 + 0.6 + 0.5 + 0.9) / 4
    assert M.overall_performance(R) == pytest.approx(0.6)
    # FWT = ((0.1 - 0.1) + (0.1 - 0.0) + (0.3 - 0.1)) / 3
    assert M.forward_transfer(R, b) == pytest.approx(0.1)


def test_positive_backward_transfer_gives_negative_forgetting():
    R = [[0.5, 0.0],
         [0.8, 0.9]]
    # BWT = 0.8 - 0.5 ; f0 = max(0.5) - 0.8 (a gain: kept signed)
    assert M.backward_transfer(R) == pytest.approx(0.3)
    assert M.forgetting_per_task(R) == pytest.approx([-0.3])
    assert M.worst_forgetting(R) == pytest.approx(-0.3)
    # No baseline: FWT undefined.
    assert M.forward_transfer(R, None) is None
    assert M.continual_metrics(R)["forward_transfer"] is None


def test_lower_is_better_scores_keep_the_signs_meaning():
    # Perplexities: lower is better.
    R = [[10.0, 50.0],
         [12.0, 11.0]]
    b = [20.0, 40.0]
    m = M.continual_metrics(R, b, higher_is_better=False)
    # ACC stays in perplexity units: (12 + 11) / 2
    assert m["overall_performance"] == pytest.approx(11.5)
    # task 0 went 10 -> 12: worse by 2 -> BWT = -2, forgetting = +2
    assert m["backward_transfer"] == pytest.approx(-2.0)
    assert m["forgetting"] == pytest.approx(2.0) and m["worst_forgetting"] == pytest.approx(2.0)
    # task 1 before its session: 50 vs untrained 40 -> worse by 10 -> FWT = -10
    assert m["forward_transfer"] == pytest.approx(-10.0)


def test_single_session_leaves_transfer_and_forgetting_undefined():
    m = M.continual_metrics([[0.7]], [0.1])
    assert m["overall_performance"] == pytest.approx(0.7)
    assert m["acc_curve"] == pytest.approx([0.7])
    for k in ("backward_transfer", "forward_transfer", "forgetting", "worst_forgetting", "worst_forgetting_task",
              "forgetting_per_task"):
        assert m[k] is None, k
    assert M.backward_transfer([[0.7]]) is None and M.forgetting([[0.7]]) is None
    assert M.forward_transfer([[0.7]], [0.1]) is None


def test_numpy_input_accepted():
    np = pytest.importorskip("numpy")
    assert M.backward_transfer(np.array(R3)) == pytest.approx(-0.25)
    assert M.forward_transfer(np.array(R3), np.array(B3)) == pytest.approx(0.1)


@pytest.mark.parametrize("R, baseline, msg", [
    ([], None, "empty"),
    ([[1.0, 2.0], [3.0]], None, "square"),
    ([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], None, "square"),
    ([[float("nan")]], None, "NaN"),
    ([[1.0, 0.0], [0.5, float("nan")]], None, r"R\[1\]\[1\] is NaN"),
    ([[float("inf")]], None, "infinite"),
    ([["0.5"]], None, "number"),
    ([[True]], None, "number"),
    ([[None]], None, "number"),
    ("abc", None, "list of rows"),
    ([0.5], None, "row 0"),
    ([[0.5, 0.1], [0.2, 0.3]], [0.1], "baseline has 1"),
    ([[0.5, 0.1], [0.2, 0.3]], [0.1, float("nan")], r"baseline\[1\] is NaN"),
    ([[0.5]], "x", "baseline"),
])
def test_bad_matrices_raise(R, baseline, msg):
    with pytest.raises(MetricsError, match=msg):
        M.continual_metrics(R, baseline)


def test_bad_task_names_and_flag():
    with pytest.raises(MetricsError, match="2 task names"):
        M.continual_metrics([[1.0]], task_names=["a", "b"])
    with pytest.raises(MetricsError, match="distinct"):
        M.continual_metrics([[1.0, 0.0], [0.0, 1.0]], task_names=["a", "a"])
    with pytest.raises(MetricsError, match="higher_is_better"):
        M.backward_transfer([[1.0]], higher_is_better="no")


def test_perplexity_helpers_by_hand():
    # NLL of 10 tokens at probability 1/100 each: ppl 100
    assert M.perplexity(10 * math.log(100), 10) == pytest.approx(100.0)
    # per-document sums weight by tokens: exp((2 + 4) / (1 + 3)) = exp(1.5)
    assert M.perplexity([2.0, 4.0], [1, 3]) == pytest.approx(math.exp(1.5))
    # logprobs -1, -2, -3: mean NLL 2 -> e^2
    assert M.perplexity_from_logprobs([-1.0, -2.0, -3.0]) == pytest.approx(math.exp(2.0))
    assert M.perplexity(0.0, 5) == 1.0
    # the docs' example: 266.7 -> 293.2 is +9.9%
    assert M.relative_change(266.7, 293.2) == pytest.approx(0.09936, abs=1e-5)
    assert M.perplexity(1e6, 1) == math.inf  # overflow -> inf, not an exception


@pytest.mark.parametrize("call, msg", [
    (lambda: M.perplexity(1.0, 0), "zero tokens"),
    (lambda: M.perplexity(-1.0, 3), "negative"),
    (lambda: M.perplexity(float("nan"), 3), "NaN"),
    (lambda: M.perplexity(1.0, 2.5), "integer"),
    (lambda: M.perplexity(1.0, True), "integer"),
    (lambda: M.perplexity([1.0], [1, 2]), "1 NLL sums for 2"),
    (lambda: M.perplexity([1.0], 1), "both"),
    (lambda: M.perplexity([1.0, 1.0], [1, -1]), "non-negative"),
    (lambda: M.perplexity_from_logprobs([]), "zero tokens"),
    (lambda: M.perplexity_from_logprobs([-1.0, 0.5]), "positive"),
    (lambda: M.perplexity_from_logprobs([float("-inf")]), "infinite"),
    (lambda: M.relative_change(0.0, 1.0), "from 0"),
])
def test_perplexity_bad_input(call, msg):
    with pytest.raises(MetricsError, match=msg):
        call()
