"""GGUF interop with the upstream `gguf` package, used exactly as repeng 0.4.0's
export_gguf / import_gguf use it (run in the separate .cache/venv-gguf made by
scripts/setup_steering_interop.sh; skipped when it is absent)."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from plasticity.steering.files import load_vector_file, save_gguf

VENV_PY = Path(__file__).resolve().parents[2] / ".cache/venv-gguf/bin/python"
pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(not VENV_PY.exists(), reason="run scripts/setup_steering_interop.sh first")]

# repeng.extract.ControlVector.import_gguf, minus the class
REPENG_IMPORT = r'''
import sys, json, gguf
reader = gguf.GGUFReader(sys.argv[1])
archf = reader.get_field("general.architecture")
arch = str(bytes(archf.parts[-1]), encoding="utf-8", errors="replace")
hint = reader.get_field("controlvector.model_hint")
if not hint or not len(hint.parts):
    raise ValueError(".gguf file missing controlvector.model_hint field")
hint = str(bytes(hint.parts[-1]), encoding="utf-8")
count = int(reader.get_field("controlvector.layer_count").parts[-1][0])
dirs = {}
for t in reader.tensors:
    if not t.name.startswith("direction."):
        continue
    dirs[int(t.name.split(".")[1])] = [float(x) for x in t.data]
print(json.dumps({"arch": arch, "hint": hint, "count": count, "dirs": dirs}))
'''

# repeng.extract.ControlVector.export_gguf, minus the class
REPENG_EXPORT = r'''
import sys, json, gguf, numpy as np
arch = "controlvector"
d = json.loads(sys.argv[2])
writer = gguf.GGUFWriter(sys.argv[1], arch)
writer.add_string(f"{arch}.model_hint", "qwen3")
writer.add_uint32(f"{arch}.layer_count", len(d))
for layer, v in d.items():
    writer.add_tensor(f"direction.{layer}", np.asarray(v, dtype=np.float32))
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
'''


def _dirs():
    rng = np.random.default_rng(3)
    return {l: rng.standard_normal(256).astype(np.float32) for l in (1, 2, 5)}


def test_ours_loads_in_repeng_reader(tmp_path):
    p = tmp_path / "ours.gguf"
    d = _dirs()
    save_gguf(p, d, "qwen3")
    out = json.loads(subprocess.run([str(VENV_PY), "-c", REPENG_IMPORT, str(p)], capture_output=True, text=True,
                                    check=True).stdout)
    assert out["arch"] == "controlvector" and out["hint"] == "qwen3" and out["count"] == 3
    for l, v in d.items():
        assert np.array_equal(np.asarray(out["dirs"][str(l)], np.float32), v)


def test_repeng_written_loads_in_ours(tmp_path):
    p = tmp_path / "theirs.gguf"
    d = _dirs()
    subprocess.run([str(VENV_PY), "-c", REPENG_EXPORT, str(p), json.dumps({l: v.tolist() for l, v in d.items()})],
                   check=True, capture_output=True)
    got, meta = load_vector_file(p)
    assert meta["general.architecture"] == "controlvector" and meta["controlvector.model_hint"] == "qwen3"
    assert sorted(got) == sorted(d)
    for l in d:
        assert np.array_equal(got[l], d[l])
