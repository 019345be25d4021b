"""Bad task-vector inputs: mismatched vectors, out-of-range options, a model that
is not the base's, values that cannot be merged. Each raises TaskVectorError
(exit 2 from the CLI) with a clear message and writes nothing; a failure in
the middle of a streaming merge leaves an existing output file untouched."""

import pytest
import torch

from plasticity.taskvec import (
    TaskVectorError,
    add_delta_,
    delta_of,
    merge_files,
    save_file,
    task_arithmetic,
    ties,
)
from plasticity.taskvec.cli import main as tv_main


@pytest.fixture
def files(tmp_path):
    g = torch.Generator().manual_seed(1)
    base = {"emb.weight": torch.randn(16, 8, generator=g), "l.0.w": torch.randn(8, 8, generator=g),
            "norm.weight": torch.ones(8)}
    ft = [{k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(2)]
    save_file(tmp_path / "base.safetensors", base, {"format": "pt"})
    for i, m in enumerate(ft):
        save_file(tmp_path / f"ft{i}.safetensors", m, {"format": "pt"})
    return tmp_path, base, ft


def _no_output(d, out):
    assert not out.exists()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def _merge_refused(d, match, inputs=("ft0", "ft1"), base="base", method="ties", **kw):
    out = d / "out.safetensors"
    with pytest.raises(TaskVectorError, match=match):
        merge_files(method, d / f"{base}.safetensors", [d / f"{i}.safetensors" for i in inputs], out, **kw)
    _no_output(d, out)


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("density", [0.0, 1.5, -0.2, float("nan"), float("inf")],
                         ids=["zero", "one_and_a_half", "negative", "nan", "inf"])
def test_density_outside_0_1(files, density):
    _merge_refused(files[0], r"density must be in \(0, 1\]", density=density)


@pytest.mark.parametrize("density", ["0", "1.5", "nan"])
def test_cli_density_outside_0_1_exits_2(files, density, capsys):
    d = files[0]
    out = d / "out.safetensors"
    rc = tv_main(["tv", "merge", "--method", "ties", "--density", density, "--base", str(d / "base.safetensors"),
                  str(d / "ft0.safetensors"), "-o", str(out)])
    assert rc == 2 and "density must be in (0, 1]" in capsys.readouterr().err
    _no_output(d, out)


def test_weights_count_wrong(files):
    _merge_refused(files[0], "3 weights for 2 inputs", weights=[1.0, 1.0, 1.0])


def test_cli_weights_count_wrong_exits_2(files, capsys):
    d = files[0]
    out = d / "out.safetensors"
    rc = tv_main(["tv", "merge", "--method", "task_arithmetic", "--weights", "1,2,3", "--base",
                  str(d / "base.safetensors"), str(d / "ft0.safetensors"), str(d / "ft1.safetensors"), "-o", str(out)])
    assert rc == 2 and "3 weights for 2 inputs" in capsys.readouterr().err
    _no_output(d, out)


def test_cli_weights_not_numbers_exits_2(files, capsys):
    d = files[0]
    out = d / "out.safetensors"
    with pytest.raises(SystemExit) as e:
        tv_main(["tv", "merge", "--method", "ties", "--weights", "1,x", "--base", str(d / "base.safetensors"),
                 str(d / "ft0.safetensors"), "-o", str(out)])
    assert e.value.code == 2 and "comma-separated numbers" in capsys.readouterr().err
    _no_output(d, out)


def test_weight_nan(files):
    _merge_refused(files[0], "weight 1 must be finite", weights=[1.0, float("nan")])


@pytest.mark.parametrize("lam", [float("nan"), float("inf")])
def test_lambda_not_finite(files, lam):
    _merge_refused(files[0], "lambda must be finite", lam=lam)


def test_unknown_method(files):
    _merge_refused(files[0], "method must be one of", method="dare")


def test_density_with_task_arithmetic(files):
    _merge_refused(files[0], "density applies to --method ties only", method="task_arithmetic", density=0.5)


def test_no_inputs(files):
    _merge_refused(files[0], "no inputs", inputs=())


def test_bad_precision(files):
    _merge_refused(files[0], "precision must be", precision="float16")


# ---------------------------------------------------------------- files that do not fit the base

def test_file_from_another_model_names(files):
    d, base, _ = files
    save_file(d / "other.safetensors", {"model.embed.weight": torch.zeros(16, 8), "l.0.w": torch.zeros(8, 8)})
    _merge_refused(d, "is not from the same model as .*missing .*not in the base", inputs=("ft0", "other"))


def test_file_from_another_model_shapes(files):
    d, base, _ = files
    other = {k: torch.zeros(v.shape) for k, v in base.items()}
    other["l.0.w"] = torch.zeros(8, 9)
    save_file(d / "other.safetensors", other)
    _merge_refused(d, r"not from the same model .*'l.0.w' has shape \[8, 9\], the base has \[8, 8\]",
                   inputs=("ft0", "other"))


def test_fine_tuned_model_with_other_dtype(files):
    d, base, _ = files
    save_file(d / "bf.safetensors", {k: v.bfloat16() for k, v in base.items()})
    _merge_refused(d, "is BF16 but the base has F32", inputs=("bf",))


def test_integer_tensor_in_base(files):
    d, base, ft = files
    save_file(d / "ibase.safetensors", {**base, "pos": torch.arange(4)})
    save_file(d / "ift.safetensors", {**ft[0], "pos": torch.arange(4)})
    _merge_refused(d, "'pos' has dtype I64", inputs=("ift",), base="ibase")


def test_integer_delta_file(files):
    d, base, _ = files
    save_file(d / "idelta.safetensors", {k: torch.zeros(v.shape, dtype=torch.int32) for k, v in base.items()})
    _merge_refused(d, "dtype I32; only float tensors", inputs=("idelta",), inputs_are_deltas=True)


def test_output_is_an_input(files):
    d = files[0]
    before = (d / "ft0.safetensors").read_bytes()
    with pytest.raises(TaskVectorError, match="is also an input"):
        merge_files("ties", d / "base.safetensors", [d / "ft0.safetensors"], d / "ft0.safetensors")
    assert (d / "ft0.safetensors").read_bytes() == before


def test_output_directory_missing(files):
    d = files[0]
    with pytest.raises(TaskVectorError, match="does not exist"):
        merge_files("ties", d / "base.safetensors", [d / "ft0.safetensors"], d / "nope" / "out.safetensors")
    assert not (d / "nope").exists()


def test_output_not_safetensors(files):
    d = files[0]
    with pytest.raises(TaskVectorError, match="must end in .safetensors"):
        merge_files("ties", d / "base.safetensors", [d / "ft0.safetensors"], d / "out.bin")
    assert not (d / "out.bin").exists()


def test_nan_weight_in_fine_tuned_model_mid_stream_keeps_old_output(files):
    """The NaN sits in the *last* tensor: the merge fails after streaming the
    others; the existing output stays byte-identical and no temp file remains."""
    d, base, ft = files
    bad = dict(ft[1])
    bad["norm.weight"] = bad["norm.weight"].clone()
    bad["norm.weight"][3] = float("nan")
    save_file(d / "nan.safetensors", bad)
    out = d / "out.safetensors"
    merge_files("ties", d / "base.safetensors", [d / "ft0.safetensors"], out)
    before = out.read_bytes()
    with pytest.raises(TaskVectorError, match="'norm.weight'.*non-finite value at element 3"):
        merge_files("ties", d / "base.safetensors", [d / "ft0.safetensors", d / "nan.safetensors"], out)
    assert out.read_bytes() == before
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_inf_in_delta_file(files):
    d, base, _ = files
    delta = {k: torch.zeros(v.shape) for k, v in base.items()}
    delta["emb.weight"][0, 0] = float("inf")
    save_file(d / "inf.safetensors", delta)
    _merge_refused(d, "non-finite", inputs=("inf",), inputs_are_deltas=True, method="task_arithmetic")


def test_delta_that_overflows_the_weights(files):
    d, base, _ = files
    delta = {k: torch.full(v.shape, 3e38) for k, v in base.items()}
    save_file(d / "huge.safetensors", delta)
    _merge_refused(d, "merged delta overflows float32", inputs=("huge", "huge"), inputs_are_deltas=True,
                   method="task_arithmetic")


# ---------------------------------------------------------------- tensor API

def test_api_shapes_mismatch_between_vectors():
    with pytest.raises(TaskVectorError, match=r"deltas\[1\] has shape \[3\], deltas\[0\] has \[4\]"):
        ties([torch.zeros(4), torch.zeros(3)], None, 0.5)
    with pytest.raises(TaskVectorError, match="shape"):
        task_arithmetic([torch.zeros(2, 2), torch.zeros(4)])


def test_api_density_weights_lambda():
    x = [torch.ones(4), torch.ones(4)]
    for dens in (0.0, 1.5, float("nan")):
        with pytest.raises(TaskVectorError, match=r"\(0, 1\]"):
            ties(x, None, dens)
    with pytest.raises(TaskVectorError, match="1 weights for 2"):
        ties(x, [1.0], 0.5)
    with pytest.raises(TaskVectorError, match="3 densities for 2"):
        ties(x, None, [0.5, 0.5, 0.5])
    with pytest.raises(TaskVectorError, match="lambda must be finite"):
        task_arithmetic(x, None, float("nan"))
    with pytest.raises(TaskVectorError, match="no task vectors"):
        ties([], None, 0.5)


def test_api_non_finite_delta():
    with pytest.raises(TaskVectorError, match="non-finite value at element 2"):
        ties([torch.tensor([1.0, 2.0, float("nan")])], None, 1.0)


def test_api_wrong_dtypes_and_layouts():
    w = torch.zeros(4, 4)
    with pytest.raises(TaskVectorError, match="float32, bfloat16 or float16"):
        delta_of(torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TaskVectorError, match="dtype"):
        delta_of(torch.zeros(4), torch.zeros(4, dtype=torch.bfloat16))
    with pytest.raises(TaskVectorError, match="not contiguous"):
        add_delta_(w, torch.zeros(4, 4, dtype=torch.float64).t())
    with pytest.raises(TaskVectorError, match="expected a float tensor"):
        ties([torch.zeros(4, dtype=torch.int32)], None, 0.5)
    with pytest.raises(TaskVectorError, match="expected a torch.Tensor"):
        add_delta_(w, [0.0] * 16)
    with pytest.raises(TaskVectorError, match="share memory"):
        add_delta_(w, w.view(-1).view(4, 4).float())  # same storage
    keep = w.clone()
    with pytest.raises(TaskVectorError, match="shape"):
        add_delta_(w, torch.ones(16))
    assert torch.equal(w, keep)


def test_delta_that_overflows_a_base_weight(files):
    d, base, ft = files
    big = dict(base)
    big["l.0.w"] = base["l.0.w"].clone()
    big["l.0.w"][2, 3] = 3e38
    save_file(d / "bigbase.safetensors", big)
    delta = {k: torch.zeros(v.shape) for k, v in base.items()}
    delta["l.0.w"][2, 3] = 2e38
    save_file(d / "push.safetensors", delta)
    _merge_refused(d, "'l.0.w'.*overflows the weight at element 19", inputs=("push",), base="bigbase",
                   inputs_are_deltas=True, method="task_arithmetic")


def test_unknown_variant(files):
    _merge_refused(files[0], "variant must be", variant="dare")


def test_variant_with_task_arithmetic(files):
    _merge_refused(files[0], "variant applies to --method ties only", method="task_arithmetic", variant="paper")


def test_paper_variant_with_normalize(files):
    _merge_refused(files[0], "always takes the disjoint mean", variant="paper", normalize=False)


def test_paper_variant_with_per_input_densities(files):
    _merge_refused(files[0], "one density for all inputs", variant="paper", density=[0.2, 0.3])


def test_paper_variant_nan_in_input_writes_nothing(files):
    d, base, ft = files
    bad = {k: v.clone() for k, v in ft[1].items()}
    bad["emb.weight"][1, 1] = float("nan")
    save_file(d / "nan.safetensors", bad)
    _merge_refused(d, "paper TIES: .*non-finite", inputs=("ft0", "nan"), variant="paper")
