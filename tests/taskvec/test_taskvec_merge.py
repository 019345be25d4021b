"""Task-vector arithmetic (plasticity.taskvec, math in Rust) against a plain-torch
reference and against mergekit 0.1.5 itself.

mergekit lives in the side venv .cache/venv-mergekit made by
scripts/setup_mergekit.sh (it reuses .venv's torch/transformers through a .pth
file). One subprocess in that venv runs (a) mergekit's per-tensor API
``merge_tensors`` on random tensors and (b) its real file-level merge
``run_merge`` on the tiny Qwen3 as base plus two copies fine-tuned here with
plasticity.Apollo on two different small text sets; the tests compare with
``plasticity.taskvec`` on the same inputs: max abs difference ≤ 1e-6 (f32).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from models import model_dir
from plasticity.taskvec import (
    SafetensorsFile,
    SafetensorsWriter,
    TaskVectorError,
    add_delta_,
    delta_of,
    diff_files,
    merge_files,
    read_header,
    roundtrip_report,
    save_file,
    task_arithmetic,
    ties,
    write_delta_file,
)
from plasticity.taskvec.cli import main as tv_main

ROOT = Path(__file__).resolve().parents[2]
MK_PY = ROOT / ".cache/venv-mergekit/bin/python"
needs_mergekit = pytest.mark.skipif(
    not MK_PY.exists(), reason="mergekit side venv missing: run bash scripts/setup_mergekit.sh")
TOL = 1e-6


# ---------------------------------------------------------------- plain-torch reference

def ref_ties(deltas, weights, density, lam, normalize):
    """mergekit 0.1.5's ties on one tensor, in torch, with a *stable* trim
    (ties at the cut keep the lowest index, our documented rule)."""
    dens = density if isinstance(density, (list, tuple)) else [density] * len(deltas)
    trimmed = []
    for d, p in zip(deltas, dens):
        if p >= 1:
            trimmed.append(d.clone())
            continue
        k = max(1, int(p * d.numel()))
        idx = torch.argsort(d.abs().reshape(-1), descending=True, stable=True)[:k]
        m = torch.zeros(d.numel(), dtype=d.dtype)
        m[idx] = 1
        trimmed.append(d * m.reshape(d.shape))
    x = torch.stack(trimmed)
    w = torch.tensor(weights, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    x = x * w
    elected = (x.sum(0) >= 0).to(x.dtype) * 2 - 1
    mask = x.sign() == elected
    mixed = (x * mask).sum(0)
    div = (w * mask).sum(0)
    div[div == 0] = 1
    if normalize:
        mixed = mixed / div
    if lam != 1:
        mixed = mixed * lam
    return mixed


def ref_ta(deltas, weights, lam, normalize):
    x = torch.stack(deltas)
    w = torch.tensor(weights, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    mixed = (x * w).sum(0)
    div = w.sum(0)
    div[div.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / div
    if lam != 1:
        mixed = mixed * lam
    return mixed


def _rand(shape, seed, std=0.02, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * std).to(dtype)


TIES_CASES = [  # (density, weights, lambda, normalize)
    (0.2, [1.0, 1.0, 1.0], 1.0, True),
    (0.5, [0.7, 0.4, 1.3], 0.6, True),
    (1.0, [1.0, 2.0, 0.5], 1.5, False),
    ([0.1, 0.5, 0.9], [0.3, 1.0, 0.8], 1.0, True),
    (0.05, [1.0, -0.5, 1.0], 2.0, False),
]
TA_CASES = [([0.5, -1.0, 0.8], 0.7, False), ([1.0, 1.0, 1.0], 1.0, True), ([0.3, 0.3, 0.4], 1.0, False)]
SHAPES = [(300, 200), (1000,), (64, 64, 3), (1,), (70_001,)]


@pytest.mark.parametrize("case", range(len(TIES_CASES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_matches_torch_reference(case, dtype):
    density, weights, lam, norm = TIES_CASES[case]
    worst = 0.0
    for s, shape in enumerate(SHAPES):
        ds = [_rand(shape, 100 * s + i, std=0.01 * (i + 1), dtype=dtype) for i in range(3)]
        out, trims = ties(ds, weights, density, lam, norm, return_trims=True)
        assert out.dtype == dtype and out.shape == torch.Size(shape)
        ref = ref_ties(ds, weights, density, lam, norm)
        worst = max(worst, (out - ref).abs().max().item())
        dens = density if isinstance(density, list) else [density] * 3
        for t, p in zip(trims, dens):
            n = math.prod(shape)
            assert t.kept == (n if p >= 1 else max(1, int(p * n)))
    assert worst <= (TOL if dtype == torch.float32 else 1e-15), worst


@pytest.mark.parametrize("case", range(len(TA_CASES)))
def test_task_arithmetic_matches_torch_reference(case):
    weights, lam, norm = TA_CASES[case]
    for s, shape in enumerate(SHAPES):
        ds = [_rand(shape, 7 * s + i) for i in range(3)]
        out = task_arithmetic(ds, weights, lam, normalize=norm)
        assert (out - ref_ta(ds, weights, lam, norm)).abs().max().item() <= TOL


def test_negate_scale_add():
    a, b = _rand((50, 40), 1), _rand((50, 40), 2)
    assert torch.equal(task_arithmetic([a], [-1.0]), -a)
    assert torch.equal(task_arithmetic([a], [1.0], 0.5), a * 0.5)
    assert torch.equal(task_arithmetic([a, b], [1.0, 1.0]), a + b)
    # bf16 deltas are widened to f32, exactly
    assert torch.equal(task_arithmetic([a.bfloat16()]), a.bfloat16().float())


def test_ties_tie_rule_and_weights_vote():
    a = torch.tensor([0.1, -0.3, 0.3, 0.2, -0.3, 0.3, 0.05, 0.0])
    out, tr = ties([a], None, 0.25, return_trims=True)
    assert out.tolist() == pytest.approx([0, -0.3, 0.3, 0, 0, 0, 0, 0])
    assert (tr[0].kept, tr[0].tied, tr[0].tied_kept) == (2, 4, 2)
    # weights enter the election (mergekit #474)
    x, y = torch.tensor([1.0]), torch.tensor([-0.6])
    assert ties([x, y], [1, 1], 1.0).item() == 1.0
    assert ties([x, y], [1, 2], 1.0).item() == pytest.approx(-0.6)


def _edges(dtype):
    base = _rand((4096,), 3, std=0.02)
    live = base + _rand((4096,), 4, std=1e-4)
    big = 3.0e38 if dtype != torch.float16 else 6.0e4
    pairs = [(0.0, 1e-40 if dtype != torch.float16 else 1e-7), (1.0, 1.0 + 2 ** -20), (big, big * 0.5),
             (-big, -big), (1e-30, 1e-31), (2.0 ** -14, 0.0), (1024.0, -0.25), (7.5, -7.5), (0.0, 0.0)]
    for i, (b, l) in enumerate(pairs):
        base[i * 11], live[i * 11] = b, l
    return live.to(dtype), base.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_delta_roundtrip_is_bit_exact(dtype):
    live, base = _edges(dtype)
    d = delta_of(live, base)
    assert d.dtype == (torch.float64 if dtype == torch.float32 else torch.float32)
    back = add_delta_(base.clone(), d)
    fwd = add_delta_(live.clone(), d, -1.0)
    assert torch.equal(back.view(torch.uint8), live.view(torch.uint8))
    assert torch.equal(fwd.view(torch.uint8), base.view(torch.uint8))
    assert roundtrip_report(live, base) == (live.numel(), 0, 0)
    # what breaks it: an exponent spread too wide for the delta's precision, a -0.0
    live2, base2 = live.clone(), base.clone()
    # full-mantissa values 20+ binades apart: the difference needs > 24 (f32) / 53 (f64) bits
    live2[1], base2[1] = {torch.float32: (1e-30, 1e30), torch.bfloat16: (2.0 ** -10 + 2.0 ** -17, 1536.0),
                          torch.float16: (2.0 ** -10 + 2.0 ** -20, 1536.0)}[dtype]
    live2[2], base2[2] = -0.0, 0.5
    r = roundtrip_report(live2, base2)
    assert (r.not_exact, r.signed_zero) == (2, 1), r


def test_add_delta_refuses_bad_input_untouched():
    w = _rand((100,), 9)
    keep = w.clone()
    bad = torch.zeros(100, dtype=torch.float64)
    bad[5] = float("nan")
    for args in [(bad,), (torch.zeros(99, dtype=torch.float64),), (torch.zeros(100), float("inf"))]:
        with pytest.raises(TaskVectorError):
            add_delta_(w, *args)
    assert torch.equal(w, keep)


# ---------------------------------------------------------------- files

def test_writer_roundtrip_and_atomicity(tmp_path):
    from safetensors import safe_open

    t = {"b": _rand((3, 4), 1), "a": _rand((5,), 2).bfloat16(), "z": torch.arange(6, dtype=torch.int64),
         "e": torch.zeros(0, 3), "s": torch.tensor(2.5, dtype=torch.float64)}
    p = tmp_path / "x.safetensors"
    save_file(p, t, {"format": "pt", "k": "välue"})
    with safe_open(str(p), "pt") as f:
        assert f.metadata() == {"format": "pt", "k": "välue"}
        for k, v in t.items():
            assert torch.equal(f.get_tensor(k), v)
    meta, infos = read_header(p)
    assert [i.name for i in infos] == list(t) and meta["k"] == "välue"
    assert oct(p.stat().st_mode & 0o777) != oct(0o600)
    before = p.read_bytes()
    # an error mid-write: previous file intact, no temporary file left
    with pytest.raises(RuntimeError):
        with SafetensorsWriter(p, [("a", torch.float32, (2,)), ("b", torch.float32, (2,))]) as w:
            w.write("a", torch.ones(2))
            raise RuntimeError("crash")
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["x.safetensors"]
    # wrong order / shape / missing tensors are refused
    with pytest.raises(TaskVectorError, match="expected tensor 'a' next"):
        with SafetensorsWriter(p, [("a", torch.float32, (2,))]) as w:
            w.write("b", torch.ones(2))
    with pytest.raises(TaskVectorError, match="not written"):
        with SafetensorsWriter(p, [("a", torch.float32, (2,)), ("b", torch.float32, (2,))]) as w:
            w.write("a", torch.ones(2))
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["x.safetensors"]


def test_reader_from_threads_and_after_close(tmp_path):
    """Reads run in Rust with the GIL released: several threads at once get their own tensors."""
    from concurrent.futures import ThreadPoolExecutor

    t = {f"t{i}": _rand((64, 33), i) for i in range(8)} | {"h": _rand((5, 7), 99).bfloat16()}
    p = tmp_path / "r.safetensors"
    save_file(p, t)
    f = SafetensorsFile(p)
    names = list(t) * 4
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(f.get, names))
    assert all(torch.equal(g, t[n]) for g, n in zip(got, names))
    assert torch.equal(f.get_mapped("h"), t["h"])
    f.close()
    f.close()
    for read in (f.get, f.get_mapped):
        with pytest.raises(TaskVectorError, match="file is closed"):
            read("t0")


def _toy_models(tmp_path, dtype=torch.float32):
    names = {"emb": (64, 16), "l.0.w": (16, 16), "l.0.n": (16,), "l.1.w": (16, 32)}
    base = {n: _rand(s, i, std=0.05).to(dtype) for i, (n, s) in enumerate(names.items())}
    ins = []
    for j in range(2):
        m = {n: (t.double() + _rand(t.shape, 50 + 10 * j + i, std=1e-3)).to(dtype)
             for i, (n, t) in enumerate(base.items())}
        save_file(tmp_path / f"ft{j}.safetensors", m, {"format": "pt"})
        ins.append(m)
    save_file(tmp_path / "base.safetensors", base, {"format": "pt"})
    return base, ins


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["ties", "task_arithmetic"])
def test_merge_files_equals_tensor_api(tmp_path, method, dtype):
    base, ins = _toy_models(tmp_path, dtype)
    kw = dict(weights=[0.6, 1.2], lam=0.9)
    if method == "ties":
        kw["density"] = 0.3
    s = merge_files(method, tmp_path / "base.safetensors", [tmp_path / "ft0.safetensors", tmp_path / "ft1.safetensors"],
                    tmp_path / "out.safetensors", **kw)
    assert s["tensors"] == len(base)
    out = SafetensorsFile(tmp_path / "out.safetensors")
    assert out.names == list(base) and out.metadata["format"] == "pt"
    for n, b in base.items():
        ds = [delta_of(m[n], b, dtype=torch.float32) for m in ins]
        merged = ties(ds, kw["weights"], 0.3, 0.9) if method == "ties" else task_arithmetic(ds, kw["weights"], 0.9)
        want = add_delta_(b.clone(), merged)
        got = out.get(n)
        assert got.dtype == dtype and torch.equal(got, want), n
    # task vectors written as files (f32) and merged with --inputs-are-deltas give the same file
    for j in range(2):
        write_delta_file(tmp_path / f"ft{j}.safetensors", tmp_path / "base.safetensors", tmp_path / f"d{j}.safetensors",
                         precision="float32")
    merge_files(method, tmp_path / "base.safetensors", [tmp_path / "d0.safetensors", tmp_path / "d1.safetensors"],
                tmp_path / "out2.safetensors", inputs_are_deltas=True, **kw)
    o2 = SafetensorsFile(tmp_path / "out2.safetensors")
    for n in base:
        assert torch.equal(o2.get(n), out.get(n))


def test_exact_delta_file_restores_the_model(tmp_path):
    base, ins = _toy_models(tmp_path)
    write_delta_file(tmp_path / "ft0.safetensors", tmp_path / "base.safetensors", tmp_path / "d.safetensors")
    d = SafetensorsFile(tmp_path / "d.safetensors")
    assert {d.tensors[n].dtype for n in base} == {"F64"}
    merge_files("task_arithmetic", tmp_path / "base.safetensors", [tmp_path / "d.safetensors"],
                tmp_path / "back.safetensors", inputs_are_deltas=True, precision="float64")
    back = SafetensorsFile(tmp_path / "back.safetensors")
    for n, t in ins[0].items():
        assert torch.equal(back.get(n).view(torch.int32), t.view(torch.int32)), n


def test_diff_files_and_cli(tmp_path, capsys):
    base, ins = _toy_models(tmp_path)
    for j in range(2):
        write_delta_file(tmp_path / f"ft{j}.safetensors", tmp_path / "base.safetensors", tmp_path / f"d{j}.safetensors")
    rows = diff_files(tmp_path / "d0.safetensors", tmp_path / "d1.safetensors")
    assert [r["name"] for r in rows] == [*base, "TOTAL"]
    for r in rows[:-1]:
        a = ins[0][r["name"]].double() - base[r["name"]].double()
        b = ins[1][r["name"]].double() - base[r["name"]].double()
        assert r["norm_a"] == pytest.approx(a.norm().item(), rel=1e-12)
        assert r["norm_b"] == pytest.approx(b.norm().item(), rel=1e-12)
        assert r["cosine"] == pytest.approx((a @ b if a.dim() == 1 else (a * b).sum()).item()
                                            / a.norm().item() / b.norm().item(), rel=1e-9, abs=1e-12)
    rows2 = diff_files(tmp_path / "ft0.safetensors", tmp_path / "ft1.safetensors", base_path=tmp_path / "base.safetensors")
    assert [r["cosine"] for r in rows2] == pytest.approx([r["cosine"] for r in rows], rel=1e-12, abs=1e-15)
    layers = diff_files(tmp_path / "d0.safetensors", tmp_path / "d1.safetensors", per_layer=True)
    assert [r["name"] for r in layers] == ["emb", "l.0.w", "l.0.n", "l.1.w", "TOTAL"]  # no "layers.N" names here
    assert tv_main(["tv", "diff", str(tmp_path / "d0.safetensors"), str(tmp_path / "d1.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "cosine" in out and "TOTAL" in out
    assert tv_main(["tv", "merge", "--method", "ties", "--density", "0.3", "--weights", "0.6,1.2", "--lambda", "0.9",
                    "--base", str(tmp_path / "base.safetensors"), str(tmp_path / "ft0.safetensors"),
                    str(tmp_path / "ft1.safetensors"), "-o", str(tmp_path / "cli.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    merge_files("ties", tmp_path / "base.safetensors", [tmp_path / "ft0.safetensors", tmp_path / "ft1.safetensors"],
                tmp_path / "api.safetensors", density=0.3, weights=[0.6, 1.2], lam=0.9)
    assert (tmp_path / "cli.safetensors").read_bytes() == (tmp_path / "api.safetensors").read_bytes()


# ---------------------------------------------------------------- mergekit

DRIVER = r'''
import json, sys, time
t0 = time.time()
import torch
torch.set_num_threads(2)
# mergekit trims with torch.argsort(|d|, descending=True), which is unstable: among elements of
# equal magnitude at the cut, which ones are kept is whatever the sort kernel does (it differs
# with tensor size). Pin that one free choice to index order (a stable sort), the rule ours
# documents, so every element can be compared; no other result of mergekit changes.
_argsort = torch.argsort
def _stable_argsort(input, dim=-1, descending=False, stable=False, **kw):
    return _argsort(input, dim=dim, descending=descending, stable=True, **kw)
torch.argsort = _stable_argsort
import mergekit, importlib.metadata as md
from mergekit.merge_methods import merge_tensors
from safetensors.torch import load_file, save_file
spec = json.load(open(sys.argv[1]))
meta = {"mergekit": md.version("mergekit"), "torch": torch.__version__, "import_s": time.time() - t0}
r = spec["random"]
t = load_file(r["in"])
out = {}
for c in r["cases"]:
    params = {"weight": c["weights"], "lambda": c["lambda"], "normalize": c["normalize"]}
    if c["method"] == "ties":
        params["density"] = c["density"]
    for k in r["tensors"]:
        ins = [t[f"base/{k}"]] + [t[f"m{i}/{k}"] for i in range(r["n_models"])]
        out[f"{c['name']}/{k}"] = merge_tensors(ins, c["method"], parameters=params, base_index=0).contiguous()
save_file(out, r["out"])
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
for f in spec["files"]:
    t1 = time.time()
    cfg = {"merge_method": f["method"], "base_model": f["base"], "dtype": "float32",
           "models": [{"model": m, "parameters": {"weight": w, **({"density": f["density"]} if f["method"] == "ties" else {})}}
                      for m, w in zip(f["models"], f["weights"])],
           "parameters": {"lambda": f["lambda"], "normalize": f["normalize"]}}
    if f.get("out_dtype"):
        cfg["out_dtype"] = f["out_dtype"]
    run_merge(MergeConfiguration.model_validate(cfg), f["out"],
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    meta[f["out"]] = time.time() - t1
json.dump(meta, open(sys.argv[2], "w"))
'''

RANDOM_SHAPES = {"mat": (300, 200), "vec": (1000,), "cube": (64, 64, 3), "one": (1,)}
MK_TIES = [("ties_d0.2", 0.2, [1.0, 1.0, 1.0], 1.0, True),
           ("ties_d0.5_w_lam", 0.5, [0.7, 0.4, 1.3], 0.6, True),
           ("ties_d1.0_nonorm", 1.0, [1.0, 2.0, 0.5], 1.5, False),
           ("ties_perinput_d", [0.1, 0.5, 0.9], [0.3, 1.0, 0.8], 1.0, True),
           ("ties_d0.2_nonorm_neg", 0.2, [1.0, -0.5, 1.0], 2.0, False)]
MK_TA = [("ta_w_lam", None, [0.5, -1.0, 0.8], 0.7, False), ("ta_norm", None, [1.0, 1.0, 1.0], 1.0, True)]
MK_FILES = [  # (tag, method, density, weights, lambda, normalize, dtype)
    ("ties_d0.2", "ties", 0.2, [1.0, 1.0], 1.0, True, "float32"),
    ("ties_d0.5_w", "ties", 0.5, [0.7, 1.3], 0.8, True, "float32"),
    ("ties_d1.0", "ties", 1.0, [1.0, 0.5], 1.0, False, "float32"),
    ("ta", "task_arithmetic", None, [0.7, 0.5], 0.9, False, "float32"),
    ("ties_d1.0_bf16", "ties", 1.0, [0.7, 1.3], 0.8, True, "bfloat16"),
    # bf16 deltas take few distinct values, so the cut at 30% runs through large
    # classes of equal |δ|: the tie rule decides many elements here (see DRIVER)
    ("ties_d0.3_bf16", "ties", 0.3, [1.0, 1.0], 1.0, True, "bfloat16"),
]
TEXTS = {
    "cats": ["The cat sat on the warm mat and purred.", "Cats like to sleep in the sun all day long.",
             "A kitten chased the red ball across the kitchen floor."],
    "sums": ["Two plus two equals four.", "Seven times six is forty-two.", "The square root of eighty-one is nine."],
}


def _train_copy(src: Path, dst: Path, texts: list[str], seed: int) -> float:
    """A short real Apollo fine-tune of the tiny Qwen3 (12 steps), saved with save_pretrained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from plasticity import Apollo

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).train()
    opt = Apollo(model.parameters(), lr=1e-3, rank=16, seed=seed)
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    for _ in range(12):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(dst)
    return loss.detach().item()


def _bf16_copy(src: Path, dst: Path):
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    f = SafetensorsFile(src / "model.safetensors")
    save_file(dst / "model.safetensors", {n: f.get(n).bfloat16() for n in f.names}, {"format": "pt"})


@pytest.fixture(scope="module")
def mk(tmp_path_factory):
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("mergekit")
    t0 = time.time()
    # random tensors: base + 3 "fine-tuned" models
    rnd = {}
    for s, (k, shape) in enumerate(RANDOM_SHAPES.items()):
        rnd[f"base/{k}"] = _rand(shape, 1000 + s, std=0.05)
        for i in range(3):
            rnd[f"m{i}/{k}"] = rnd[f"base/{k}"] + _rand(shape, 2000 + 10 * s + i, std=0.01 * (i + 1))
    save_file(tmp / "random.safetensors", rnd, {"format": "pt"})
    cases = [{"name": n, "method": "ties" if n.startswith("ties") else "task_arithmetic", "density": d,
              "weights": w, "lambda": l, "normalize": nm} for n, d, w, l, nm in MK_TIES + MK_TA]
    # real task vectors: two Apollo fine-tunes of the tiny Qwen3 on different texts
    base = model_dir("qwen3-tiny")
    models = {"base": base}
    losses = {}
    for seed, (tag, texts) in enumerate(TEXTS.items()):
        models[tag] = tmp / tag
        losses[tag] = _train_copy(base, tmp / tag, texts, seed + 1)
    for tag in ("base", *TEXTS):
        _bf16_copy(models[tag], tmp / f"{tag}_bf16")
    t_train = time.time() - t0
    files = []
    for tag, method, dens, ws, lam, norm, dtype in MK_FILES:
        sfx = "_bf16" if dtype == "bfloat16" else ""
        files.append({"tag": tag, "method": method, "density": dens, "weights": ws, "lambda": lam, "normalize": norm,
                      "base": str(tmp / f"base{sfx}") if sfx else str(base),
                      "models": [str(tmp / f"{t}{sfx}") for t in TEXTS], "out": str(tmp / f"mk_{tag}"),
                      "out_dtype": dtype if sfx else None})
    spec = {"random": {"in": str(tmp / "random.safetensors"), "out": str(tmp / "mk_random.safetensors"),
                       "tensors": list(RANDOM_SHAPES), "n_models": 3, "cases": cases},
            "files": files}
    (tmp / "spec.json").write_text(json.dumps(spec))
    t1 = time.time()
    r = subprocess.run([str(MK_PY), "-c", DRIVER, str(tmp / "spec.json"), str(tmp / "meta.json")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"mergekit driver failed:\n{r.stderr[-4000:]}"
    meta = json.loads((tmp / "meta.json").read_text())
    print(f"\nmergekit {meta['mergekit']} (torch {meta['torch']}): subprocess {time.time() - t1:.1f} s "
          f"(import {meta['import_s']:.1f} s); training two Apollo copies {t_train:.1f} s, final losses {losses}")
    return {"tmp": tmp, "spec": spec, "meta": meta, "rnd": rnd, "models": models}


@pytest.mark.interop
@needs_mergekit
@pytest.mark.parametrize("case", [c[0] for c in MK_TIES + MK_TA])
def test_random_tensors_match_mergekit(mk, case):
    name, dens, ws, lam, norm = next(c for c in MK_TIES + MK_TA if c[0] == case)
    theirs = SafetensorsFile(mk["spec"]["random"]["out"])
    rnd = mk["rnd"]
    worst = 0.0
    for k in RANDOM_SHAPES:
        b = rnd[f"base/{k}"]
        ds = [delta_of(rnd[f"m{i}/{k}"], b, dtype=torch.float32) for i in range(3)]
        merged = ties(ds, ws, dens, lam, norm) if name.startswith("ties") else task_arithmetic(ds, ws, lam, normalize=norm)
        ours = add_delta_(b.clone(), merged)
        t = theirs.get(f"{name}/{k}")
        assert t.dtype == torch.float32 and t.shape == ours.shape
        worst = max(worst, (ours - t).abs().max().item())
    print(f"\n{case}: max |ours - mergekit| = {worst:.3g}")
    assert worst <= TOL


@pytest.mark.interop
@needs_mergekit
@pytest.mark.parametrize("tag", [f[0] for f in MK_FILES])
def test_real_task_vectors_match_mergekit_run_merge(mk, tag):
    f = next(x for x in mk["spec"]["files"] if x["tag"] == tag)
    out_dir = Path(f["out"])
    shards = sorted(out_dir.glob("*.safetensors"))
    assert shards, f"mergekit wrote no safetensors in {out_dir}: {list(out_dir.iterdir())}"
    theirs = {}
    for s in shards:
        sf = SafetensorsFile(s)
        theirs.update({n: sf.get(n) for n in sf.names})
    ours_path = mk["tmp"] / f"ours_{tag}.safetensors"
    argv = ["tv", "merge", "--method", f["method"], "--weights", ",".join(map(str, f["weights"])),
            "--lambda", str(f["lambda"]), "--normalize" if f["normalize"] else "--no-normalize",
            "--base", str(Path(f["base"]) / "model.safetensors"),
            *[str(Path(m) / "model.safetensors") for m in f["models"]], "-o", str(ours_path)]
    if f["density"] is not None:
        argv[4:4] = ["--density", str(f["density"])]
    assert tv_main(argv) == 0
    ours = SafetensorsFile(ours_path)
    base = SafetensorsFile(Path(f["base"]) / "model.safetensors")
    # tied embeddings: the tiny Qwen3 stores no lm_head.weight, and neither output has one
    assert set(ours.names) == set(theirs) == set(base.names), set(ours.names) ^ set(theirs)
    worst, worst_name, n_diff, straddles = 0.0, "", 0, 0
    tie_worst, tie_diff = 0.0, 0
    ins = [SafetensorsFile(Path(m) / "model.safetensors") for m in f["models"]]
    for n in ours.names:
        o, t = ours.get(n), theirs[n]
        assert o.dtype == t.dtype == base.get(n).dtype, n
        err = (o.double() - t.double()).abs()
        if f["density"] is not None and f["density"] < 1:
            # Elements whose |δ| equals a threshold that the cut runs through: which of those
            # are kept is a convention (ours: lowest index; mergekit: its argsort's order, made
            # stable in DRIVER so that it is the same rule); counted apart, to show where the
            # two would part if the orders differed.
            b = base.get(n)
            ds = [delta_of(x.get(n), b, dtype=torch.float32) for x in ins]
            _, trims = ties(ds, None, f["density"], return_trims=True)
            tied = torch.zeros(o.shape, dtype=torch.bool)
            for d, tr in zip(ds, trims):
                if tr.tied_kept < tr.tied and tr.threshold > 0:
                    straddles += 1
                    tied |= d.abs() == tr.threshold
            if tied.any():
                tie_worst = max(tie_worst, err[tied].max().item())
                tie_diff += int((err[tied] > 0).sum())
                err = err.masked_fill(tied, 0.0)
        n_diff += int((err > 0).sum())
        if err.max().item() > worst:
            worst, worst_name = err.max().item(), n
    changed = sum(int((ours.get(n) != base.get(n)).sum()) for n in ours.names)
    print(f"\n{tag}: max |ours - mergekit| = {worst:.3g} ({worst_name or '-'}) outside threshold ties, "
          f"{n_diff} elements differ there; {changed} elements changed vs base; {straddles} trims cut through "
          f"equal magnitudes, {tie_diff} tied elements differ (max {tie_worst:.3g})")
    assert changed > 0
    assert worst <= TOL, f"{worst_name}: {worst}"
    # every element of every tensor, tied ones included (f32 and bf16: with the tie order pinned,
    # the bf16 cut through large classes of equal |δ| keeps the same elements too)
    assert tie_diff == 0, f"{tie_diff} elements differ at straddled threshold ties"


# ---------------------------------------------------------------- TIES paper variant

def _paper_ties_reference(flat: torch.Tensor, K: float, lam: float) -> torch.Tensor:
    """The TIES repo's merge_utils (topk_values_mask, resolve_sign "mass",
    resolve_zero_signs "majority", disjoint_merge "dis-mean") on [tasks, params]."""
    n, d = flat.shape
    k = d - int(d * K)
    kth, _ = flat.abs().kthvalue(k, dim=1, keepdim=True)
    m = flat * (flat.abs() >= kth)
    sign = torch.sign(m.sum(dim=0))
    majority = torch.sign(sign.sum())
    sign[sign == 0] = majority
    keep = torch.where(sign.unsqueeze(0) > 0, m > 0, m < 0)
    sel = m * keep
    return sel.sum(dim=0) / torch.clamp((sel != 0).sum(dim=0).float(), min=1) * lam


@pytest.mark.parametrize("density,lam", [(0.2, 1.0), (0.05, 1.3), (0.5, 0.8)])
def test_paper_variant_matches_the_paper_code(tmp_path, density, lam):
    base, ins = _toy_models(tmp_path)
    out = tmp_path / "paper.safetensors"
    assert tv_main(["tv", "merge", "--method", "ties", "--variant", "paper", "--density", str(density), "--lambda",
                    str(lam), "--base", str(tmp_path / "base.safetensors"), str(tmp_path / "ft0.safetensors"),
                    str(tmp_path / "ft1.safetensors"), "-o", str(out)]) == 0
    names = list(base)
    flat = torch.stack([torch.cat([delta_of(m[n], base[n], dtype=torch.float32).reshape(-1) for n in names])
                        for m in ins])
    merged = _paper_ties_reference(flat, density, lam)
    got = SafetensorsFile(out)
    off = 0
    for n in names:
        k = base[n].numel()
        want = add_delta_(base[n].clone(), merged[off:off + k].reshape(base[n].shape).contiguous())
        off += k
        assert (got.get(n) - want).abs().max().item() <= TOL, n
    # it is a different merge from mergekit's per-tensor one
    merge_files("ties", tmp_path / "base.safetensors", [tmp_path / "ft0.safetensors", tmp_path / "ft1.safetensors"],
                tmp_path / "mk.safetensors", density=density, lam=lam)
    mk = SafetensorsFile(tmp_path / "mk.safetensors")
    assert any(not torch.equal(mk.get(n), got.get(n)) for n in names)
