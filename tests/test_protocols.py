"""Label protocols: partial, single positive, zero-shot, published files, saved files."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mlrkit.config import Config, ConfigError
from mlrkit.data import load_dataset
from mlrkit.data.protocols import (
    Protocol,
    ProtocolError,
    apply_protocol,
    load_list_protocol,
    load_voc_partial,
    partial,
    select_labels,
    single_positive,
    zero_shot_split,
)
from mlrkit.labels import LabelSpace

DATA = Path(os.environ.get("MLRKIT_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
COCO = DATA / "coco2014"
VOC = DATA / "voc2007"
needs_coco = pytest.mark.skipif(not (COCO / "coco_train_full.txt").is_file(),
                                reason=f"COCO-2014 label lists not found under {COCO}")
needs_voc = pytest.mark.skipif(not (VOC / "partial").is_dir(),
                               reason=f"VOC2007 label files not found under {VOC}")


@pytest.fixture(scope="module")
def coco_full():
    return load_dataset("list", labels_file=str(COCO / "coco_train_full.txt"), num_classes=80)


@needs_coco
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_partial_keeps_p_of_the_coco_labels(coco_full, p: float) -> None:
    prot = partial(coco_full, keep=p, seed=3)
    t, full = prot.targets, coco_full.targets
    known = t != 0
    assert abs(float(known.double().mean()) - p) < 0.005
    assert torch.equal(t[known], full[known])  # kept labels are unchanged
    # positives and negatives are kept alike
    for v in (1, -1):
        assert abs(float(known[full == v].double().mean()) - p) < 0.005
    assert prot.meta["seed"] == 3 and prot.meta["params"] == {"keep": p}
    assert prot.ids == coco_full.ids
    assert torch.equal(partial(coco_full, keep=p, seed=3).targets, t)
    assert not torch.equal(partial(coco_full, keep=p, seed=4).targets, t)


@needs_coco
def test_saved_protocol_reloads_bit_identically(coco_full, tmp_path: Path) -> None:
    prot = partial(coco_full, keep=0.3, seed=0)
    path = prot.save(tmp_path / "sub" / "coco_partial_0.3.npz")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    back = Protocol.load(path)
    assert back == prot
    assert back.targets.numpy().tobytes() == prot.targets.numpy().tobytes()
    assert back.sha256 == hashlib.sha256(prot.targets.numpy().tobytes()).hexdigest()
    d = apply_protocol(coco_full, back)
    assert torch.equal(d.targets, prot.targets)
    assert d.info["protocol"]["seed"] == 0


def test_altered_protocol_file_is_refused(tmp_path: Path) -> None:
    t = torch.tensor([[1, -1], [-1, 1]], dtype=torch.int8)
    path = partial(t, keep=1.0, seed=0).save(tmp_path / "p.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["targets"] = arrays["targets"].copy()
    arrays["targets"][0, 0] = 0
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ProtocolError, match=r"p.npz: SHA-256 of the targets"):
        Protocol.load(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ProtocolError, match=r"p.npz: not a readable mlrkit protocol"):
        Protocol.load(path)
    with pytest.raises(ProtocolError, match="protocol file not found"):
        Protocol.load(tmp_path / "none.npz")


def test_single_positive_is_uniform_and_documents_empty_rows() -> None:
    n = 40000
    t = torch.tensor([[1, -1, 1, 1, 0, 1]] * n + [[-1, -1, 0, -1, -1, -1]], dtype=torch.int8)
    prot = single_positive(t, seed=1)
    s = prot.targets
    assert bool(((s == 1).sum(1)[:n] == 1).all())
    assert bool((s[n] == 0).all()) and prot.meta["num_without_positive"] == 1
    assert bool((s[(s != 0)] == 1).all()) and bool((t[s == 1] == 1).all())
    freq = (s[:n] == 1).double().mean(0)
    assert torch.allclose(freq[[0, 2, 3, 5]], torch.full((4,), 0.25, dtype=torch.float64),
                          atol=0.01)  # 4 sd of a binomial(40000, 0.25) fraction is 0.0087
    assert float(freq[[1, 4]].sum()) == 0.0


def test_zero_shot_split_and_select_labels() -> None:
    names = ("a", "b", "c", "d")
    z = zero_shot_split(names, unseen=["b", "d"])
    assert z.unseen.tolist() == [False, True, False, True] and z.seen.tolist() == [
        True, False, True, False]
    assert zero_shot_split(LabelSpace(names), unseen=[1, 3]) == z
    assert zero_shot_split(names, unseen=torch.tensor([0, 1, 0, 1], dtype=torch.bool)) == z
    r = zero_shot_split(names, num_unseen=2, seed=5)
    assert int(r.unseen.sum()) == 2 and r == zero_shot_split(names, num_unseen=2, seed=5)
    with pytest.raises(KeyError, match="unknown class name 'e'"):
        zero_shot_split(names, unseen=["e"])
    from mlrkit.data import MultiLabelDataset

    ds = MultiLabelDataset(None, torch.tensor([[1, -1, 1, -1]], dtype=torch.int8), z, ids=["x"])
    seen = select_labels(ds, z.seen)
    assert seen.labels.names == ("a", "c") and seen.targets.tolist() == [[1, 1]]


@needs_coco
def test_published_coco_files_are_kept_positives(coco_full) -> None:
    # label counts published with the files (robust-loss-mlml README)
    published = {"0.75left": 181422, "0.4left": 96251, "singlelabel": 82081}
    full = coco_full.targets
    for key, n_pos in published.items():
        prot = load_list_protocol(COCO / f"coco_train_{key}.txt", num_classes=80)
        t = prot.targets
        assert int((t == 1).sum()) == n_pos
        assert bool((t != -1).all())  # unlisted classes are unknown, never negative
        d = apply_protocol(coco_full, prot)  # every kept positive is a full positive
        assert d.info["protocol_conflicts"] == 0
        assert bool((full[t == 1] == 1).all())
        assert bool(((t == 1).sum(1) >= 1).all())  # each image keeps one positive or more
    single = load_list_protocol(COCO / "coco_train_singlelabel.txt", num_classes=80)
    assert bool(((single.targets == 1).sum(1) == 1).all())
    neg = load_list_protocol(COCO / "coco_train_0.4left.txt", num_classes=80,
                             unlisted="negative")
    assert bool((neg.targets != 0).all())


@needs_voc
def test_published_voc_partial_files() -> None:
    voc = load_dataset("voc2007", root=str(VOC), split="trainval", difficult="negative")
    for k in range(1, 10):
        prot = load_voc_partial(VOC / "partial" / f"train_proportion_0.{k}.txt", voc)
        known = prot.targets != 0
        assert abs(float(known.double().mean()) - k / 10) < 0.01
        assert torch.equal(prot.targets[known], voc.targets[known])
        assert prot.meta["params"]["keep"] == k / 10
    d = apply_protocol(voc, prot)
    assert torch.equal(d.targets, prot.targets)
    # the files count difficult-only objects as negatives: a conflict with "positive"
    pos = load_dataset("voc2007", root=str(VOC), split="trainval", difficult="positive")
    with pytest.raises(ProtocolError, match="disagree with the dataset"):
        apply_protocol(pos, prot)
    d = apply_protocol(pos, prot, on_conflict="protocol")
    assert d.info["protocol_conflicts"] > 0


def test_apply_protocol_aligns_by_id_and_refuses_others(tmp_path: Path) -> None:
    from mlrkit.data import MultiLabelDataset

    labels = LabelSpace(("x", "y"))
    t = torch.tensor([[1, -1], [-1, 1], [1, 1]], dtype=torch.int8)
    ds = MultiLabelDataset(None, t, labels, ids=["a", "b", "c"])
    prot = partial(ds, keep=1.0, seed=0)
    shuffled = Protocol(prot.targets[[2, 0, 1]], {"name": "p"}, ["c", "a", "b"])
    assert torch.equal(apply_protocol(ds, shuffled).targets, t)
    other = Protocol(prot.targets, {"name": "p"}, ["a", "b", "z"])
    with pytest.raises(ProtocolError, match="image ids differ"):
        apply_protocol(ds, other)
    bare = partial(t, keep=1.0, seed=0)  # no ids known
    assert bare.ids is None and "source_ids_sha256" not in bare.meta
    assert torch.equal(apply_protocol(ds, bare).targets, t)
    with pytest.raises(ProtocolError, match="2 rows but the dataset has 3"):
        apply_protocol(ds, partial(t[:2], keep=1.0, seed=0))
    meta = json.loads(json.dumps(prot.meta))
    assert Protocol.load(prot.save(tmp_path / "x.npz")).meta == meta


# --- legacy partial mode: the published VOC2007 files --------------------------------------


@pytest.fixture(scope="module")
def voc_published(data_dir: Path) -> tuple[dict[str, Any], dict[int, Protocol]]:
    root = data_dir / "voc2007"
    if not (root / "partial").is_dir():
        pytest.skip(f"VOC2007 partial-label files not found under {root}")
    voc = {d: load_dataset("voc2007", root=str(root), split="trainval", difficult=d)
           for d in ("negative", "ignore")}
    files = {k: load_voc_partial(root / "partial" / f"train_proportion_0.{k}.txt", voc["ignore"])
             for k in range(1, 10)}
    return voc, files


def test_legacy_partial_reproduces_the_published_voc_files(voc_published) -> None:
    voc, files = voc_published
    neg, ign = voc["negative"], voc["ignore"]
    n, c = neg.targets.shape
    assert (n, c) == (5011, 20)
    difficult = ign.targets == 0  # the 607 difficult-only (image, class) entries
    assert int(difficult.sum()) == 607
    for k, pub in files.items():
        p = k / 10
        prot = partial(neg, keep=p, seed=0, rng="legacy")
        # bit for bit: the published files are VOC2007 trainval with difficult-only entries
        # as negatives (-1), masked by np.random.seed(0); np.random.random((N, C)) < p
        assert torch.equal(prot.targets, pub.targets), p
        np.random.seed(0)
        assert torch.equal(pub.targets != 0, torch.from_numpy(np.random.random((n, c)) < p))
        # how "difficult" appears in the files: -1 where kept, 0 where dropped, never 1
        kept_difficult = pub.targets[difficult]
        assert set(kept_difficult.unique().tolist()) <= {-1, 0}
        assert int((kept_difficult == -1).sum()) > 0
        # VOC's default difficult="ignore" gives the same mask but 0 on those entries
        ign_prot = partial(ign, keep=p, seed=0, rng="legacy")
        assert torch.equal(ign_prot.targets != 0, (pub.targets != 0) & ~difficult)
        # the default generator does not reproduce them
        assert not torch.equal(partial(neg, keep=p, seed=0).targets, pub.targets)
    assert prot.meta["params"] == {"keep": 0.9, "rng": "legacy"} and prot.meta["seed"] == 0


def test_legacy_partial_mode_and_its_metadata() -> None:
    t = torch.from_numpy(np.random.default_rng(1).choice([-1, 0, 1], size=(300, 7)).astype(
        np.int8))
    state = np.random.get_state()[1].copy()
    prot = partial(t, keep=0.4, seed=5, rng="legacy")
    assert np.array_equal(np.random.get_state()[1], state)  # global NumPy state untouched
    mask = torch.from_numpy(np.random.RandomState(5).random_sample((300, 7)) < 0.4)
    assert torch.equal(prot.targets, torch.where(mask, t, torch.zeros_like(t)))
    assert prot.meta["params"] == {"keep": 0.4, "rng": "legacy"}
    assert prot.meta["rng"].startswith("numpy.random.RandomState")
    default = partial(t, keep=0.4, seed=5)
    assert default.meta["params"] == {"keep": 0.4}
    assert default.meta["rng"] == "numpy.random.Generator(PCG64(seed))"
    assert torch.equal(partial(t, keep=0.4, seed=5, rng="pcg64").targets, default.targets)
    with pytest.raises(ValueError, match="rng='mt'; choose one of pcg64, legacy"):
        partial(t, keep=0.4, rng="mt")
    with pytest.raises(ValueError, match=r"seed=-1 must be in \[0, 2\*\*32\)"):
        partial(t, keep=0.4, seed=-1, rng="legacy")


def test_config_protocol_specs() -> None:
    from mlrkit.data import MultiLabelDataset
    from mlrkit.engine.builders import apply_protocol as apply_spec

    t = torch.from_numpy(np.random.default_rng(2).choice([-1, 1], size=(50, 4)).astype(np.int8))
    ds = MultiLabelDataset(None, t, LabelSpace(("a", "b", "c", "d")),
                           ids=[f"i{i}" for i in range(50)])

    def run(spec: str, seed: int = 7) -> Any:
        cfg = Config(seed=seed)
        cfg.data.protocol = spec
        return apply_spec(cfg, ds)

    assert torch.equal(run("partial:0.3").targets, partial(t, 0.3, seed=7).targets)
    legacy = partial(t, 0.3, seed=0, rng="legacy").targets
    for seed in (0, 7):  # seed 0 whatever the run's seed
        d = run("partial:0.3:legacy", seed)
        assert torch.equal(d.targets, legacy)
        assert d.info["protocol"]["seed"] == 0
        assert d.info["protocol"]["params"] == {"keep": 0.3, "rng": "legacy"}
    assert torch.equal(run("partial:0.3:legacy:5").targets,
                       partial(t, 0.3, seed=5, rng="legacy").targets)
    assert not torch.equal(run("partial:0.3:legacy:5").targets, legacy)
    bad = {"partial:": "bad keep fraction ''", "partial:abc": "bad keep fraction 'abc'",
           "partial:1.5": r"must be in \[0, 1\]", "partial:nan": r"must be in \[0, 1\]",
           "partial:0.3:": "malformed spec", "partial:0.3:pcg64": "malformed spec",
           "partial:0.3:legacy:1:2": "malformed spec",
           "partial:0.3:legacy:x": "seed 'x' in 'partial:0.3:legacy:x' must be an integer",
           "partial:0.3:legacy:-1": "seed '-1'", "partial:0.3:legacy:": "seed ''",
           "partial:0.3:legacy:4294967296": r"in \[0, 2\*\*32\)"}
    for spec, msg in bad.items():
        with pytest.raises(ConfigError, match=f"data.protocol: .*{msg}"):
            run(spec)


# --- benchmarks/partial_sweep.py ------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "partial_sweep.py"
    spec = importlib.util.spec_from_file_location("partial_sweep", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sweep_table_and_average(sweep) -> None:
    rows = [{"prop": p, "mAP": m, "CF1": m - 10, "OF1": m - 5}
            for p, m in zip((0.9, 0.1, 0.5), (90.0, 70.0, 81.0))]
    s = sweep.summarize(rows)
    assert s["props"] == [0.1, 0.5, 0.9]  # sorted by proportion
    assert s["average"] == pytest.approx({"mAP": 80.333333, "CF1": 70.333333, "OF1": 75.333333})
    table = sweep.markdown_table(s, "title")
    lines = table.splitlines()
    assert lines[0] == "title"
    assert lines[2] == "| metric (%) | 10% | 50% | 90% | Avg. |"
    assert lines[4] == "| mAP | 70.0 | 81.0 | 90.0 | 80.3 |"
    assert lines[6] == "| OF1 | 65.0 | 76.0 | 85.0 | 75.3 |"
    assert "mean over the 3 proportions run" in table
    full = sweep.summarize([{"prop": p, "mAP": 1.0, "CF1": 2.0, "OF1": 3.0}
                            for p in sweep.PROPS])
    assert "mean over" not in sweep.markdown_table(full)
    assert sweep.parse_props(["0.1,0.3", "0.9"]) == [0.1, 0.3, 0.9]
    for bad, msg in ((["0"], r"must be in \(0, 1\]"), (["x"], "not a number"),
                     (["0.1", "0.1"], "given twice"), ([","], "no proportion")):
        with pytest.raises(ValueError, match=msg):
            sweep.parse_props(bad)
    assert sweep.run_overrides("cfg", 0.3, ["seed=1"], "/o") == [
        "seed=1", "name=cfg_p0.3", "data.protocol=partial:0.3:legacy", "output_dir=/o"]


def test_sweep_trains_each_proportion(sweep, tmp_path: Path, capsys) -> None:
    import yaml

    from conftest import make_color_images

    labels = make_color_images(tmp_path / "imgs", 16, size=32)
    val = make_color_images(tmp_path / "val", 8, size=32, seed=1)
    names = str(tmp_path / "imgs" / "names.txt")
    cfg = {"name": "tiny", "output_dir": str(tmp_path / "elsewhere"),
           "model": {"name": "baseline", "backbone": "efficientnet_lite0", "pretrained": False},
           "data": {"train": {"name": "list", "labels_file": str(labels), "names": names},
                    "val": {"name": "list", "labels_file": str(val), "names": names},
                    "image_size": 32, "batch_size": 8, "num_workers": 0,
                    "cache_dir": str(tmp_path / "cache")},
           "train": {"epochs": 1, "progress": False, "amp": "none"}}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "runs"
    argv = ["--config", str(config), "--props", "0.3,0.7", "--set", "seed=4",
            "--output-dir", str(out)]
    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "tiny_partial_sweep.json").read_text())
    assert summary["props"] == [0.3, 0.7] and summary["sets"] == ["seed=4"]
    for row, p in zip(summary["rows"], (0.3, 0.7)):
        run = out / f"tiny_p{p}"
        assert row["name"] == run.name and row["protocol"] == f"partial:{p}:legacy"
        resolved = yaml.safe_load((run / "config.yaml").read_text())
        assert resolved["data"]["protocol"] == f"partial:{p}:legacy"
        assert resolved["seed"] == 4
        final = json.loads((run / "metrics.json").read_text())["final"]
        assert row["mAP"] == pytest.approx(100 * final["mAP"])
    for m in ("mAP", "CF1", "OF1"):
        mean = (summary["rows"][0][m] + summary["rows"][1][m]) / 2
        assert summary["average"][m] == pytest.approx(mean)
    assert summary["table"] in printed
    assert f"| mAP | {summary['rows'][0]['mAP']:.1f} | " in printed
    # a second sweep into the same folder needs --resume; with it, finished runs are reused
    assert sweep.main(argv) == 2
    assert "a run with this name exists" in capsys.readouterr().err
    assert sweep.main([*argv, "--resume"]) == 0
    again = json.loads((out / "tiny_partial_sweep.json").read_text())
    assert [r["resumed"] for r in again["rows"]] == [True, True]
    assert [r["mAP"] for r in again["rows"]] == pytest.approx([r["mAP"] for r in
                                                               summary["rows"]])
    with pytest.raises(ConfigError, match="the sweep sets the protocol"):
        sweep.run_sweep(config, [0.5], ["data.protocol=partial:0.5"], out)


def test_protocol_on_a_fold_is_drawn_on_the_whole_split(voc_published, data_dir) -> None:
    """A training fold gets exactly the published labels of its images: the protocol is
    drawn on the whole split (all 5,011 trainval rows), then the fold's rows are taken."""
    from mlrkit.config import load_config
    from mlrkit.engine.builders import load_train_split

    _, files = voc_published
    root = str(data_dir / "voc2007")
    cfg = load_config(None, [
        f"data.train={{name: voc2007, root: {root}, split: trainval, difficult: negative, "
        "fold: train}", "data.protocol=partial:0.1:legacy"])
    ds = load_train_split(cfg)
    assert 3700 < len(ds) < 3800  # the 75 % fold
    pub = files[1]
    row = {i: n for n, i in enumerate(pub.ids)}
    assert torch.equal(ds.targets, pub.targets[[row[i] for i in ds.ids]])
    assert ds.info["protocol"]["drawn_on"] == "the whole split (5011 images)"
    # drawing on the fold alone gives other labels (the old behaviour)
    from mlrkit.engine.builders import apply_protocol, load_split

    assert not torch.equal(apply_protocol(cfg, load_split(cfg, "train")).targets, ds.targets)
