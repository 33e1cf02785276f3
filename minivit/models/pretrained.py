"""Trained weights as files: ``save_pretrained`` / ``load_pretrained``, and the weights that ship.

The format is **safetensors** (a JSON header, then the raw little-endian arrays: no pickle,
nothing executes on load), with timm's ``state_dict`` keys, so a file written here loads into
timm's twin of the model unchanged, and the other way round:

    save_pretrained(model, "vit.safetensors")                  # minivit → file
    timm_model.load_state_dict(safetensors.torch.load_file("vit.safetensors"))    # file → timm
    load_pretrained(model, "vit.safetensors")                  # file → minivit

Only the ``safetensors`` package's NumPy API is used: loading needs no torch.

Shipped weights live inside the package, in ``minivit/weights/<model>.safetensors`` (float16, to
keep the wheel small), each with a ``<model>.json`` record beside it that says how it was trained
and what it scored (``create_model(name, pretrained=True)`` reads both; a test re-measures the
score). ``pretrained_models()`` lists them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from minivit import backend

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
"""Where the shipped weights are (``minivit/weights``); tests point it elsewhere."""


def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError("minivit's weight files are safetensors files: pip install safetensors "
                          "(its NumPy API is all minivit uses; torch is not needed)") from None
    return safetensors.numpy


def save_pretrained(model, path, dtype=None, metadata: dict | None = None) -> Path:
    """Write ``model.state_dict()`` to the safetensors file ``path``.

    ``dtype`` (e.g. ``np.float16``) casts the floating-point arrays; integer buffers keep
    theirs. ``metadata`` (str → str) goes into the file's header beside ``format: pt``, the
    tag timm and transformers expect of a PyTorch-layout file. The file is written whole or
    not at all (a temporary file renamed into place)."""
    st = _safetensors_numpy()
    tensors = {}
    for k, a in model.state_dict().items():
        a = np.asarray(backend.to_numpy(a))
        if not a.flags.c_contiguous:          # (np.ascontiguousarray would make a 0-d buffer 1-d)
            a = a.copy()
        if dtype is not None and a.dtype.kind == "f":
            a = a.astype(dtype)
        tensors[k] = a
    header = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    st.save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def load_pretrained(model, path, strict: bool = True):
    """Load a safetensors file (minivit's or timm's) into ``model``; returns ``model``.

    Each array is cast to the dtype of the parameter it replaces and moved to its device
    (``Module.load_state_dict``), so float16 files load into float32 or float64 models."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_pretrained: no file {path}")
    model.load_state_dict(_safetensors_numpy().load_file(str(path)), strict=strict)
    return model


def pretrained_models() -> list:
    """Names of the models whose trained weights ship with the package."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors") if p.with_suffix(".json").is_file())


# CIFAR-10 variants with a committed budget run whose weights do not ship, and why: all ten at
# float16 would take 58 MB, and the package keeps its weights under 40 MB (one trained model per
# architecture a lesson teaches, the teacher, and lesson 13's segformer_tiny fit: 39.8 MB).
NOT_SHIPPED = {
    "vit_tiny": "the package keeps its weights under 40 MB, and deit_tiny ships the same backbone "
                "(plus the distillation token), vit_nano a ViT that scores higher",
    "pvt_tiny": "the package keeps its weights under 40 MB, and pvt_v2_tiny, its successor, ships",
}


def pretrained_record(name: str) -> dict:
    """The record beside a shipped weight file: data, recipe, command, accuracy."""
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        have = ", ".join(pretrained_models()) or "none yet"
        why = f" ({NOT_SHIPPED[name]})" if name in NOT_SHIPPED else ""
        raise ValueError(f"no trained weights ship for {name!r}{why}; shipped: {have}. Train it with "
                         f"python -m minivit.train --model {name} and load the checkpoint instead")
    return json.loads(path.read_text())


def load_shipped(model, name: str):
    """Load the shipped weights of ``name`` into ``model`` (what ``pretrained=True`` does)."""
    pretrained_record(name)                     # the clear error when there are none
    load_pretrained(model, WEIGHTS_DIR / f"{name}.safetensors")
    model.pretrained_cfg = {"name": name, "file": f"{name}.safetensors", **pretrained_record(name)}
    return model


# =========================================================================== shipping a run
def ship_run(run_dir, weights_dir=None, name: str | None = None) -> dict:
    """Make a training run's final weights a shipped model: ``<weights_dir>/<model>.safetensors``
    (float16) and the ``<model>.json`` record beside it, whose ``test_accuracy_1000`` is measured
    here on the float16 weights, on the first 1,000 CIFAR-10 test images (what the package's test
    re-measures; for a segmentation run on ``shapes``, ``test_miou_1000`` on its 1,000 test scenes).
    The run must use the model's default configuration (``pretrained=True`` builds the model by
    name, with the record's ``num_classes``). Returns the record."""
    import time

    from minivit.train import CheckpointError, load_checkpoint, load_model_from_checkpoint

    run_dir = Path(run_dir)
    last = run_dir / "last.ckpt"
    if not last.is_file():
        raise CheckpointError(f"{run_dir}: no last.ckpt; give a run directory made by python -m minivit.train")
    ckpt = load_checkpoint(last)
    cfg = ckpt["config"]
    if ckpt["epoch"] != cfg["epochs"] or ckpt.get("partial"):
        raise ValueError(f"{run_dir}: the run stopped after epoch {ckpt['epoch']} of {cfg['epochs']}; "
                         f"finish it (python -m minivit.train --resume {run_dir}) before shipping it")
    if cfg.get("model_kwargs"):
        raise ValueError(f"{run_dir}: trained with --model-kwargs {cfg['model_kwargs']}, but pretrained=True "
                         f"builds {cfg['model']!r} with its defaults; register the configuration as a model")
    segmentation = cfg.get("task", "classification") == "segmentation"
    wanted = "shapes" if segmentation else "cifar10"      # the data a shipped model is scored on again
    if cfg["dataset"] != wanted or cfg.get("subset"):
        raise ValueError(f"{run_dir}: only full CIFAR-10 runs (classification) and full shapes runs (segmentation) "
                         f"ship (this one: task {cfg.get('task', 'classification')}, dataset {cfg['dataset']}, "
                         f"subset {cfg.get('subset')})")
    name = name or cfg["model"]
    weights_dir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    model, _ = load_model_from_checkpoint(last)
    path = save_pretrained(model, weights_dir / f"{name}.safetensors", dtype=np.float16,
                           metadata={"model": name, "source": "minivit"})
    load_pretrained(model, path)                                    # score the float16 weights
    metrics = ckpt["metrics"]
    record = {
        "model": name, "params": model.num_parameters(), "num_classes": cfg["num_classes"],
        "data": "shapes (generated, seed 0)" if segmentation else _data_name(cfg.get("data_source", "?")),
        "n_train": cfg["n_train"],
        "command": "python -m minivit.train " + " ".join(_recipe_args(cfg)),
        "epochs": cfg["epochs"], "device": cfg["device"],
        "train_time_s": round(sum(m["train_time_s"] for m in metrics), 1),
    }
    if segmentation:
        record["task"] = "segmentation"                           # (score_shipped reads it)
        record.update({"final_test_miou": metrics[-1]["test_miou"],
                       "final_test_pixel_acc": metrics[-1]["test_pixel_acc"], "n_test": cfg["n_test"],
                       "test_miou_1000": score_shipped(model, record),
                       "test_miou_1000_note": "the float16 weights' mIoU on the 1,000 generated shapes test scenes"})
    else:
        record.update({"final_test_acc": metrics[-1]["test_acc"], "n_test": cfg["n_test"],
                       "test_accuracy_1000": score_shipped(model, record),
                       "test_accuracy_1000_note": "the float16 weights on the first 1,000 CIFAR-10 test images"})
    record.update({"run": run_dir.name, "platform": cfg.get("versions", {}).get("platform"),
                   "shipped": time.strftime("%Y-%m-%d")})
    (weights_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def score_shipped(model, record: dict) -> float:
    """What a shipped model's record promises, measured: the accuracy on the first 1,000 CIFAR-10
    test images, or for a segmentation model (``record["task"]``) the mIoU on the 1,000 generated
    ``shapes`` test scenes (the whole test split)."""
    from minivit import data
    from minivit.train import evaluate, evaluate_segmentation
    if record.get("task") == "segmentation":
        ds = data.load_dataset("shapes", None, test_subset=1000, need_train=False)
        return evaluate_segmentation(model, data.DeviceLoader(ds.test, "cpu", 100), ds.num_classes)["miou"]
    ds = data.load_dataset("cifar10", None, test_subset=1000, need_train=False)
    return evaluate(model, data.DeviceLoader(ds.test, "cpu", 250))["acc"]


def _data_name(source: str) -> str:
    """'CIFAR-10 (cifar10-jpeg.tar.gz)': the file the data came from, without this machine's paths."""
    first = source.split(" (")[0].strip()
    return f"CIFAR-10 ({Path(first).name or first})"


_RECIPE_KEYS = ("model", "epochs", "batch_size", "opt", "lr", "min_lr", "sched", "cooldown_epochs", "weight_decay",
                "head_weight_decay", "warmup_epochs", "label_smoothing", "clip_grad", "drop_path", "crop_padding",
                "randaugment", "random_erasing", "progressive_resize", "mixup", "cutmix", "teacher", "distillation",
                "seed")


def _recipe_args(cfg: dict) -> list:
    """The command-line flags that reproduce a run's recipe (resolved defaults written out)."""
    args = []
    if cfg.get("task", "classification") != "classification":
        args += ["--task", cfg["task"]]
    if cfg.get("dataset", "cifar10") != "cifar10":
        args += ["--dataset", cfg["dataset"]]
    for k in _RECIPE_KEYS:
        v = cfg.get(k)
        if v is None or v is False or (k in ("mixup", "cutmix", "random_erasing") and not v) \
                or (k == "distillation" and v == "none"):
            continue
        args += [f"--{k.replace('_', '-')}", str(v)]
    if cfg.get("hflip") is False:
        args.append("--no-hflip")
    return args


def main(argv=None):
    """python -m minivit.ship RUN_DIR [--name NAME]: ship a run's weights."""
    from minivit import cli
    from minivit.data.cifar10 import DatasetError
    from minivit.train import CheckpointError
    ap = cli.ArgumentParser(prog="python -m minivit.ship",
                                 description="Ship a finished CIFAR-10 run's weights with the package: "
                                             "minivit/weights/<model>.safetensors (float16) and <model>.json.")
    ap.add_argument("run", help="the run directory (python -m minivit.train's --out-dir)")
    ap.add_argument("--name", default=None, help="the shipped name; default: the run's model")
    ap.add_argument("--weights-dir", default=None, help=f"default: {WEIGHTS_DIR}")
    args = ap.parse_args(argv)
    try:
        record = ship_run(args.run, args.weights_dir, args.name)
    except (ValueError, OSError, CheckpointError, DatasetError) as e:
        cli.fail(str(e))
    print(json.dumps(record, indent=1))
