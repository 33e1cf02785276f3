"""benchmarks/optimizer_memory.py: its committed record equals the state arrays of a real training
step (forward, backward, step) of vit_nano with AdamW and with Adafactor, and the closed forms."""
import importlib.util
import json
from math import prod
from pathlib import Path

import numpy as np
import pytest

import minivit.models
from minivit import Tensor, optim
from minivit.functional import cross_entropy

REPO = Path(__file__).resolve().parents[1]


def script():
    spec = importlib.util.spec_from_file_location("optimizer_memory", REPO / "benchmarks" / "optimizer_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("opt_name", ["adamw", "adafactor"])
def test_record_equals_the_state_after_a_real_step(opt_name):
    record = {r["model"]: r for r in json.loads((REPO / "benchmarks" / "optimizer_memory.json").read_text())["rows"]}
    assert set(record) == set(script().MODELS)
    model = minivit.models.create_model("vit_nano")
    opt = script().OPTIMIZERS[opt_name](optim.param_groups_weight_decay(model, 0.05))
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 3, 32, 32), dtype=np.float32))
    cross_entropy(model(x), Tensor(np.array([1, 7]))).backward()
    opt.step()
    arrays = [v for st in opt.state.values() for v in st.values() if isinstance(v, np.ndarray)]
    nbytes = sum(a.size * a.itemsize for a in arrays)
    assert all(a.dtype == np.float32 for a in arrays)
    assert nbytes == opt.state_bytes() == record["vit_nano"][f"{opt_name}_state_bytes"]
    params = [p for p in model.parameters() if p.requires_grad]
    if opt_name == "adamw":                              # m and v: twice the parameters
        assert nbytes == 2 * 4 * sum(p.numel() for p in params)
    else:                                                # rows + columns per matrix of each stack
        assert nbytes == 4 * sum(prod(p.shape[:-1]) + prod(p.shape[:-2]) * p.shape[-1] if p.ndim > 1
                                 else p.numel() for p in params)
    assert record["vit_nano"]["params"] == sum(p.numel() for p in params)


def test_script_refuses_an_unknown_model(capsys):
    with pytest.raises(SystemExit) as e:
        script().main(["vit_tinyy"])
    assert e.value.code == 2 and "unknown model(s) vit_tinyy" in capsys.readouterr().err
