"""Bad input that used to pass silently or fail with a raw error now ends in a clear message."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from mlrkit.config import Config, ConfigError, config_from_dict, load_config
from mlrkit.engine.builders import build_model, load_split
from mlrkit.engine.checkpoint import (
    CheckpointError,
    _canonical_header,
    load_train_state,
    save_checkpoint,
    save_train_state,
)
from mlrkit.model import create_model
from mlrkit.predict import load_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ------------------------------------------------------------------- 1. numeric bounds
@pytest.mark.parametrize("override,message", [
    ("train.epochs=0", "train.epochs: must be >= 1, got 0"),
    ("train.epochs=-2", "train.epochs: must be >= 1, got -2"),
    ("data.batch_size=0", "data.batch_size: must be >= 1, got 0"),
    ("data.eval_batch_size=-1", "data.eval_batch_size: must be >= 0, got -1"),
    ("data.num_workers=-1", "data.num_workers: must be >= 0, got -1"),
    ("data.image_size=0", "data.image_size: must be >= 1, got 0"),
    ("train.ema=1.0", "train.ema: must be >= 0 and < 1, got 1.0"),
    ("eval.threshold=1.5", "eval.threshold: must be > 0 and < 1, got 1.5"),
    ("eval.top_k=-3", "eval.top_k: must be >= 0, got -3"),
    ("sched.step_size=0", "sched.step_size: must be >= 1, got 0"),
    ("optim.lr=-0.1", "optim.lr: must be >= 0, got -0.1"),
])
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_edge_values_are_accepted():
    cfg = load_config(None, ["train.epochs=1", "data.batch_size=1", "data.num_workers=0",
                             "data.eval_batch_size=0", "data.image_size=1", "train.ema=0",
                             "eval.top_k=0"])
    assert (cfg.train.epochs, cfg.data.batch_size, cfg.data.num_workers) == (1, 1, 0)


def test_every_shipped_config_is_within_bounds():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert paths
    for p in paths:
        load_config(p)  # raises on a value out of bounds


# ----------------------------------------------------------- 2., 3. create_model checks
@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_create_model_rejects_bad_num_classes(n):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        create_model("baseline", backbone="cached", in_dim=8, num_classes=n)


def test_create_model_rejects_embeddings_without_rows():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("baseline", backbone="cached", in_dim=8,
                     label_embeddings=torch.zeros(0, 4))


def test_create_model_unknown_option_lists_the_allowed_ones():
    with pytest.raises(ValueError) as e:
        create_model("baseline", backbone="cached", in_dim=8, num_classes=3, poolin="max")
    assert str(e.value) == "options.poolin: unknown key; allowed: dropout, pooling"
    assert not isinstance(e.value, TypeError)
    model = create_model("baseline", backbone="cached", in_dim=8, num_classes=3, pooling="max")
    assert model.num_classes == 3


def test_create_model_options_of_a_keyword_only_head():
    with pytest.raises(ValueError, match=r"options\.head: unknown key; allowed: .*heads") as e:
        create_model("cmsg", backbone="cached", in_dim=8, num_classes=3, head=2)
    assert "in_dim" not in str(e.value) and "num_classes" not in str(e.value)


def test_build_model_reports_the_config_key():
    cfg = config_from_dict({"model": {"name": "baseline", "pretrained": False,
                                      "options": {"dropuot": 0.1}}})
    with pytest.raises(ConfigError, match=r"^model\.options\.dropuot: unknown key; "
                                          r"allowed: dropout, pooling$"):
        build_model(cfg, 3, {})


# ------------------------------------------------------------ 4. class count mismatch
def _checkpoint(tmp_path: Path, label_names: list[str],
                semantics: dict[str, torch.Tensor] | None = None) -> Path:
    cfg = Config()
    cfg.model.pretrained = False
    model = build_model(cfg, 3, {})
    meta = {"config": cfg.to_dict(), "label_names": label_names,
            "thresholds": [0.5] * len(label_names), "version": "test"}
    save_checkpoint(tmp_path / "last", model, meta, semantics)
    return tmp_path / "last.safetensors"


def test_load_model_round_trip(tmp_path):
    weights = _checkpoint(tmp_path, ["a", "b", "c"])
    model, _, meta = load_model(weights)
    assert model.num_classes == 3 and meta["label_names"] == ["a", "b", "c"]


def test_load_model_names_both_class_counts(tmp_path):
    weights = _checkpoint(tmp_path, ["a", "b", "c", "d"])
    with pytest.raises(RuntimeError) as e:
        load_model(tmp_path)  # the run directory
    msg = str(e.value)
    assert str(weights) in msg and "last.json lists 4 classes but the weights have 3" in msg
    assert "head." in msg  # the tensor that does not fit


def test_load_model_mismatch_in_stored_semantics(tmp_path):
    _checkpoint(tmp_path, ["a", "b"], {"embeddings": torch.ones(3, 5), "graph": torch.eye(3)})
    with pytest.raises(RuntimeError, match="last.json lists 2 classes but the weights have 3 "
                                           r"\(__semantics__\.embeddings"):
        load_model(tmp_path / "last.json")


# ----------------------------------------------------------- 5. corrupt train_state.pt
def test_train_state_round_trip(tmp_path):
    p = tmp_path / "train_state.pt"
    save_train_state(p, {"epoch": 3, "w": torch.arange(4)})
    st = load_train_state(p)
    assert st["epoch"] == 3 and torch.equal(st["w"], torch.arange(4))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_corrupt_train_state_names_file_and_cause(tmp_path, damage):
    p = tmp_path / "train_state.pt"
    save_train_state(p, {"epoch": 3, "w": torch.randn(1000)})
    data = p.read_bytes()
    p.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                   "garbage": bytes(range(256)) * 4}[damage])
    with pytest.raises(CheckpointError) as e:
        load_train_state(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and "truncated or corrupt" in msg
    assert "earlier copy" in msg and "\n" not in msg


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_train_state_is_refused(tmp_path):
    marker = tmp_path / "ran"
    p = tmp_path / "train_state.pt"
    torch.save({"epoch": 1, "x": _Payload(str(marker))}, p)
    with pytest.raises(CheckpointError, match="refused") as e:
        load_train_state(p)
    assert str(p) in str(e.value)
    assert not marker.exists()  # the payload never ran


# --------------------------------------------------------- 6. deterministic safetensors
SAVE_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from mlrkit.engine.checkpoint import save_checkpoint
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    save_checkpoint(Path(sys.argv[1]), model, {"version": "1.2.3"},
                    {"embeddings": torch.ones(2, 3), "graph": None})
""")


def test_same_weights_same_bytes_across_processes(tmp_path):
    digests = set()
    for seed in ("0", "1", "2"):
        stem = tmp_path / f"ckpt{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", SAVE_SCRIPT, str(stem)], env=env, check=True,
                       timeout=300)
        digests.add(hashlib.sha256(stem.with_suffix(".safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    f = tmp_path / "ckpt0.safetensors"
    tensors = load_file(f)
    assert set(tensors) == {"0.weight", "0.bias", "2.weight", "2.bias",
                            "__semantics__.embeddings"}
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    assert torch.equal(tensors["2.weight"], ref[2].weight.detach())
    with safe_open(f, "pt") as sf:
        assert sf.metadata() == {"format": "mlrkit", "version": "1.2.3"}


def test_canonical_header_fixes_metadata_order():
    tensors = {"b": torch.arange(3, dtype=torch.float32), "a": torch.ones(2, 2, dtype=torch.int64)}
    metadata = {f"key{i}": str(i) for i in range(12)}
    blobs = {_canonical_header(st_save(tensors, metadata=metadata)) for _ in range(10)}
    assert len(blobs) == 1
    blob = blobs.pop()
    n = int.from_bytes(blob[:8], "little")
    assert n % 8 == 0
    header = blob[8:8 + n].decode().rstrip(" ")
    assert list(json.loads(header)["__metadata__"]) == sorted(metadata)
    from safetensors.torch import load

    out = load(blob)
    assert torch.equal(out["a"], tensors["a"]) and torch.equal(out["b"], tensors["b"])


# ------------------------------------------------------------------- 7. empty dataset
def test_empty_dataset_is_a_config_error(tmp_path):
    (tmp_path / "labels.txt").write_text("")
    (tmp_path / "names.txt").write_text("red\ngreen\n")
    cfg = config_from_dict({"data": {"train": {
        "name": "list", "labels_file": str(tmp_path / "labels.txt"),
        "names": str(tmp_path / "names.txt")}}})
    with pytest.raises(ConfigError) as e:
        load_split(cfg, "train")
    msg = str(e.value)
    assert msg.startswith(f"data.train: dataset list at {tmp_path / 'labels.txt'} has no images (")
    assert "names=" in msg
