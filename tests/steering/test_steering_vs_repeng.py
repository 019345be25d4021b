"""Our extraction against repeng 0.4.0 itself, on the tiny Qwen3 model and on SmolLM2-135M-Instruct
(the real model: 30 layers, 576 wide, a Llama).

repeng (+ scikit-learn, gguf) lives in the side venv .cache/venv-repeng made by
scripts/setup_steering_interop.sh; it reuses .venv's torch/transformers/numpy
through a .pth file. One subprocess in that venv trains repeng's vectors
(``ControlVector.train`` on the plain HF model: extraction does not need
``ControlModel``, so the 0.4.0 ``ControlModule.__getattr__`` bug is not hit),
dumps its raw last-token hidden states, writes a GGUF with its own
``export_gguf`` and reads ours with its own ``import_gguf``. The tests then
compare with ``plasticity.steering.extract`` on the same model, pairs and layers.

repeng 0.4.0 has only ``pca_diff`` (default), ``pca_center`` and the
experimental ``umap``; it has no mean-difference method, so ``mean_diff`` is
checked against the mean of the differences of repeng's own hidden states.
"""

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from models import model_dir

ROOT = Path(__file__).resolve().parents[2]
VENV_PY = ROOT / ".cache/venv-repeng/bin/python"
pytestmark = [pytest.mark.interop, pytest.mark.skipif(
    not VENV_PY.exists(), reason="repeng side venv missing: run bash scripts/setup_steering_interop.sh")]

# 16 contrastive pairs of different lengths (so the batch is padded and the
# last-non-pad-token read matters).
PAIRS = [
    ("I always tell the truth, even when it hurts.", "I always lie, especially when it helps me."),
    ("Honestly, I broke the vase.", "It was the cat that broke the vase, not me."),
    ("I will admit my mistake to the team today", "I will hide my mistake from the team"),
    ("The report shows exactly what we measured.", "The report shows what the client wanted to see."),
    ("Yes.", "No, never, absolutely not, I was not there."),
    ("I returned the extra change to the cashier", "I kept the extra change"),
    ("My answer is what I really believe", "My answer is whatever gets me out of trouble"),
    ("I do not know, so I will say so.", "I do not know, so I will make something up."),
    ("We paid every tax we owed this year.", "We hid our income from the tax office."),
    ("The numbers are real", "The numbers are invented"),
    ("I found a wallet and gave it to the police station nearby.", "I found a wallet and kept the money."),
    ("She told her friend the honest truth about the party.", "She lied to her friend about the party."),
    ("He signed his own name.", "He forged his boss's signature on the cheque."),
    ("The label lists every ingredient in the food", "The label leaves out the cheap fillers"),
    ("I am sorry; that was my fault", "That was someone else's fault, obviously"),
    ("Trust me, I checked it twice and it is correct.", "Trust me, it is fine, I did not check anything."),
]
METHODS = ("pca_diff", "pca_center")  # all non-experimental methods of repeng 0.4.0

DRIVER = r'''
import json, sys, time
import numpy as np
np.float_ = np.float64  # repeng 0.4.0 annotates with np.float_ (removed in numpy 2); .venv has numpy 2
import torch
torch.set_num_threads(2)
from transformers import AutoModelForCausalLM, AutoTokenizer
import repeng, sklearn
from repeng import ControlVector, DatasetEntry
from repeng.extract import batched_get_hiddens
from sklearn.decomposition import PCA

model_path, pairs_path, ours_gguf, out_dir = sys.argv[1:5]
t0 = time.time()
tok = AutoTokenizer.from_pretrained(model_path)
if tok.pad_token_id is None:
    tok.pad_token = tok.eos_token
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
dataset = [DatasetEntry(positive=p, negative=n) for p, n in json.load(open(pairs_path))]
arrays = {}
meta = {"sklearn": sklearn.__version__, "numpy": np.__version__, "torch": torch.__version__,
        "padding_side": tok.padding_side}
swapped = [DatasetEntry(positive=e.negative, negative=e.positive) for e in dataset]
for method in ("pca_diff", "pca_center"):
    for tag, data in (("", dataset), ("swapped/", swapped)):
        cv = ControlVector.train(model, tok, data, method=method)  # default layers: range(-1, -n, -1)
        meta[tag + method + "_layers"] = sorted(int(l) for l in cv.directions)
        for l, v in cv.directions.items():
            arrays[f"{tag}{method}/{l}"] = np.asarray(v)
        if method == "pca_diff" and not tag:
            meta["model_type"] = cv.model_type
            cv.export_gguf(out_dir + "/theirs.gguf")
n = model.config.num_hidden_layers
strs = [s for e in dataset for s in (e.positive, e.negative)]
for l, h in batched_get_hiddens(model, tok, strs, list(range(n)), 32).items():
    arrays[f"hidden/{l}"] = h
    # the PCA exactly as repeng fits it, before its sign vote (the sign a vote tie keeps)
    pos, neg = h[::2], h[1::2]
    c = (pos + neg) / 2
    for method, train in (("pca_diff", pos - neg), ("pca_center", np.concatenate([pos - c, neg - c]))):
        arrays[f"sklearn/{method}/{l}"] = PCA(n_components=1, whiten=False).fit(train).components_[0]
imp = ControlVector.import_gguf(ours_gguf)
meta["imported_model_type"] = imp.model_type
for l, v in imp.directions.items():
    arrays[f"imported/{l}"] = np.asarray(v)
np.savez(out_dir + "/repeng.npz", **arrays)
meta["seconds"] = time.time() - t0
json.dump(meta, open(out_dir + "/meta.json", "w"))
'''


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _vote(h, v):
    """repeng's sign vote on raw hidden states h ([p0, n0, p1, n1, ...]): (#pos>neg, #pos<neg)."""
    proj = h @ v / np.linalg.norm(v)
    return int((proj[0::2] > proj[1::2]).sum()), int((proj[0::2] < proj[1::2]).sum())


MODEL_TYPES = {"qwen3-tiny": "qwen3", "smollm2-135m-instruct": "llama"}


@pytest.fixture(scope="module", params=sorted(MODEL_TYPES))
def run(tmp_path_factory, request):
    from plasticity.steering import extract as ex
    from plasticity.steering.files import save_gguf

    tmp = tmp_path_factory.mktemp("repeng")
    mdir = model_dir(request.param)
    model, tok = ex.load_model(str(mdir))
    n = model.config.num_hidden_layers
    # one forward for every method and both pair orders (a pair's hidden states do not depend on the
    # order within it); extract() itself, which does the same per call, is checked against it below
    hidden = ex.read_hidden(model, tok, [s for p in PAIRS for s in p], list(range(n)))
    swapped_hidden = {l: h.reshape(-1, 2, h.shape[1])[:, ::-1].reshape(h.shape) for l, h in hidden.items()}
    ours = {m: ex.directions_from_hidden({l: h for l, h in hidden.items() if l > 0}, m)
            for m in (*METHODS, "mean_diff")}
    ours.update({"swapped/" + m: ex.directions_from_hidden({l: h for l, h in swapped_hidden.items() if l > 0}, m)
                 for m in METHODS})
    extracted = ex.extract(model, tok, PAIRS, method="pca_diff")
    assert sorted(extracted) == sorted(ours["pca_diff"])
    assert all(np.array_equal(extracted[l], ours["pca_diff"][l]) for l in extracted)
    save_gguf(tmp / "ours.gguf", ours["pca_diff"], model.config.model_type)
    (tmp / "pairs.json").write_text(json.dumps(PAIRS))
    t0 = time.time()
    r = subprocess.run([str(VENV_PY), "-c", DRIVER, str(mdir), str(tmp / "pairs.json"), str(tmp / "ours.gguf"),
                        str(tmp)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"repeng driver failed:\n{r.stderr[-4000:]}"
    theirs = dict(np.load(tmp / "repeng.npz"))
    meta = json.loads((tmp / "meta.json").read_text())
    print(f"\nrepeng subprocess {time.time() - t0:.1f} s (train+io {meta['seconds']:.1f} s); "
          f"sklearn {meta['sklearn']}, numpy {meta['numpy']}, torch {meta['torch']}")
    return dict(ours=ours, hidden=hidden, theirs=theirs, meta=meta, tmp=tmp, n=n,
                model_type=MODEL_TYPES[request.param])


def test_hidden_state_read_matches_repeng(run):
    for l in range(run["n"]):
        np.testing.assert_allclose(run["hidden"][l], run["theirs"][f"hidden/{l}"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("swap", [False, True], ids=["pairs", "swapped"])
@pytest.mark.parametrize("method", METHODS)
def test_directions_match_repeng(run, method, swap):
    # swapped pairs give the same PCA axis, so the sign vote must flip in exactly one
    # of the two runs: both the flip and the no-flip path are compared
    key = ("swapped/" if swap else "") + method
    ours, theirs, meta = run["ours"][key], run["theirs"], run["meta"]
    # same default layer set: repeng's range(-1, -n, -1) == our 1..n-1
    assert sorted(ours) == meta[key + "_layers"] == list(range(1, run["n"]))
    report = []
    for l in sorted(ours):
        t = theirs[f"{key}/{l}"]
        assert t.dtype == np.float32 and ours[l].dtype == np.float32
        assert abs(np.linalg.norm(t) - 1) < 1e-5 and abs(np.linalg.norm(ours[l]) - 1) < 1e-5
        c = _cos(ours[l], t)
        h = theirs[f"hidden/{l}"]
        if swap:
            h = h.reshape(-1, 2, h.shape[1])[:, ::-1].reshape(h.shape)
        sk = theirs[f"sklearn/{method}/{l}"]
        flipped = _cos(sk, t) < 0
        up, down = _vote(h, sk)
        tie = up == down
        report.append(f"{key} layer {l}: cos {c:+.7f} (1-cos {1 - c:.1e}), vote on sklearn's sign {up}:{down}"
                      f"{' (tie)' if tie else ''}, {'flipped' if flipped else 'kept'}")
        assert flipped == (down > up)
        if tie:
            # both keep sklearn's svd_flip sign (largest-|x| entry positive); only
            # compare up to sign when that entry is itself ambiguous
            a = np.sort(np.abs(t))[-2:]
            if a[1] - a[0] < 1e-4:
                c = abs(c)
        assert c >= 0.999, report[-1]
    print("\n" + "\n".join(report))


@pytest.mark.parametrize("method", METHODS)
def test_pre_vote_sign_matches_sklearn(run, method):
    """The sign kept on a vote tie: sklearn's svd_flip (largest-|x| entry positive)."""
    from plasticity.steering import extract as ex

    for l in range(run["n"]):
        x = run["hidden"][l].astype(np.float64)
        pos, neg = x[0::2], x[1::2]
        c = (pos + neg) / 2
        v = ex._pca1(pos - neg if method == "pca_diff" else np.concatenate([pos - c, neg - c]))
        assert _cos(v, run["theirs"][f"sklearn/{method}/{l}"]) >= 0.999, (method, l)


def test_mean_diff_is_mean_of_repeng_hidden_differences(run):
    # repeng 0.4.0 has no mean-difference method; check against its own activations
    for l, v in run["ours"]["mean_diff"].items():
        h = run["theirs"][f"hidden/{l}"].astype(np.float64)
        np.testing.assert_allclose(v, (h[0::2] - h[1::2]).mean(0), rtol=1e-4, atol=1e-5)


def test_repeng_import_gguf_reads_ours(run):
    theirs, meta = run["theirs"], run["meta"]
    assert meta["imported_model_type"] == run["model_type"]
    got = {int(k.split("/")[1]): v for k, v in theirs.items() if k.startswith("imported/")}
    assert sorted(got) == sorted(run["ours"]["pca_diff"])
    for l, v in run["ours"]["pca_diff"].items():
        assert got[l].dtype == np.float32 and np.array_equal(got[l], v)


def test_ours_reads_repeng_export_gguf(run):
    from plasticity.steering.files import load_vector_file

    got, md = load_vector_file(run["tmp"] / "theirs.gguf")
    assert md["general.architecture"] == "controlvector"
    assert md["controlvector.model_hint"] == run["meta"]["model_type"] == run["model_type"]
    assert md["controlvector.layer_count"] == len(got)
    assert sorted(got) == run["meta"]["pca_diff_layers"]
    for l, v in got.items():
        assert np.array_equal(v, run["theirs"][f"pca_diff/{l}"])
