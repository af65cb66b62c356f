import json
from pathlib import Path

import pytest

from mlrkit.config import ConfigError, load_config, parse_overrides


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\noptim: {lr: 0.01}\ndata: {val: {name: voc2007, root: /a}}\n")
    cfg = load_config(p, ["optim.lr=1e-3", "data.val.root=/elsewhere", "data.val.split=val2017",
                          "model.options.heads=4"])
    assert cfg.name == "x"
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.data.val == {"name": "voc2007", "root": "/elsewhere", "split": "val2017"}
    assert cfg.model.options == {"heads": 4}


def test_int_accepted_for_float_but_not_reverse(tmp_path):
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        load_config(None, ["train.epochs=1.5"])


@pytest.mark.parametrize("text,match", [
    ("optim: {lrr: 1}\n", r"optim\.lrr: unknown key"),
    ("train: {epochs: many}\n", r"train\.epochs: expected an integer"),
    ("sched: {name: linear}\n", r"sched\.name: 'linear' is not one of"),
    ("model: [1, 2]\n", r"model: expected a mapping"),
    ("a: [\n", r"not valid YAML"),
    ("- 1\n", r"top level must be a mapping"),
])
def test_bad_configs_name_the_key(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_parse_overrides_types():
    d = parse_overrides(["a.b=3", "a.c=true", "d=[1, 2]", "e=hello", "f=null"])
    assert d == {"a": {"b": 3, "c": True}, "d": [1, 2], "e": "hello", "f": None}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["novalue"])


def test_round_trip_yaml(tmp_path):
    cfg = load_config(None, ["name=rt", "optim.name=sgd", "train.amp=bf16"])
    p = tmp_path / "rt.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p) == cfg


def test_holdout_split_is_deterministic_and_disjoint():
    from mlrkit.data import holdout_split

    ids = [f"im{i}" for i in range(40)]
    val = holdout_split(ids, "val", 0.25, seed=0)
    train = holdout_split(ids, "train", 0.25, seed=0)
    assert len(val) == 10 and len(train) == 30
    assert sorted(val + train) == list(range(40))
    # independent of order: the same ids land in val when the list is reversed
    rev = holdout_split(ids[::-1], "val", 0.25, seed=0)
    assert {ids[::-1][i] for i in rev} == {ids[i] for i in val}
    assert holdout_split(ids, "val", 0.25, seed=1) != val


# ------------------------------------------------------------ _base_ composition
REPO = Path(__file__).resolve().parents[1]
BEFORE = json.loads((REPO / "tests" / "data" / "configs_before_base.json").read_text())
CONVERTED = sorted(k for k in BEFORE if k.endswith(".yaml"))


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", CONVERTED)
def test_converted_configs_resolve_as_before(name):
    """Each ablation config that now names a _base_ resolves to what its old, self-contained
    text gave (kept in tests/data/configs_before_base.json), key for key."""
    from mlrkit.config import compose_config, config_from_dict

    path = REPO / "configs" / name
    text = path.read_text()
    assert "\n_base_:" in text and text.startswith("# "), name  # converted, comment kept
    assert compose_config(path) == BEFORE[name]  # the same keys, not only the same defaults
    assert load_config(path) == config_from_dict(BEFORE[name])


def test_every_composed_shipped_config_loads():
    composed = [p for p in sorted((REPO / "configs").glob("*.yaml"))
                if "\n_base_:" in p.read_text()]
    assert len(composed) >= len(CONVERTED)
    for p in composed:
        assert "_base_" not in load_config(p).to_yaml(), p.name


def test_base_is_merged_under_the_file_then_set(tmp_path):
    _write(tmp_path / "base.yaml", "name: base\nseed: 3\n"
           "model: {name: cmsg, options: {heads: 4, layers: 1, tau: 0.3}}\n"
           "optim: {lr: 1.0e-3, betas: [0.8, 0.9]}\n")
    child = _write(tmp_path / "child.yaml", "# an ablation\n_base_: base.yaml\nname: child\n"
                   "model: {options: {tau: 0.5, saa: false}}\noptim: {betas: [0.7, 0.99]}\n")
    cfg = load_config(child, ["model.options.layers=2"])
    assert cfg.name == "child" and cfg.seed == 3 and cfg.model.name == "cmsg"
    assert cfg.model.options == {"heads": 4, "layers": 2, "tau": 0.5, "saa": False}
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.optim.betas == [0.7, 0.99]  # lists are replaced, not merged


def test_base_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    _write(tmp_path / "common" / "root.yaml", "seed: 7\ntrain: {epochs: 3}\n")
    _write(tmp_path / "common" / "mid.yaml", "_base_: root.yaml\ntrain: {epochs: 5}\n")
    _write(tmp_path / "extra.yaml", "data: {batch_size: 8}\ntrain: {epochs: 9}\n")
    leaf = _write(tmp_path / "runs" / "leaf.yaml",
                  "_base_: [../common/mid.yaml, ../extra.yaml]\nname: leaf\n")
    monkeypatch.chdir(tmp_path / "common")  # the working folder plays no part
    cfg = load_config(Path("..") / "runs" / "leaf.yaml")
    # recursion (root under mid), then the list in order (extra over mid), then the file
    assert (cfg.name, cfg.seed, cfg.data.batch_size, cfg.train.epochs) == ("leaf", 7, 8, 9)
    assert load_config(leaf) == cfg


@pytest.mark.parametrize("files,start,loop", [
    ({"a.yaml": "_base_: a.yaml\n"}, "a.yaml", "a.yaml -> a.yaml"),
    ({"a.yaml": "_base_: sub/b.yaml\n", "sub/b.yaml": "_base_: [../c.yaml]\n",
      "c.yaml": "_base_: a.yaml\nseed: 1\n"}, "a.yaml",
     "a.yaml -> sub/b.yaml -> c.yaml -> a.yaml"),
])
def test_base_cycles_name_the_files(tmp_path, monkeypatch, files, start, loop):
    for name, text in files.items():
        _write(tmp_path / name, text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="_base_ cycle") as e:
        load_config(start)
    assert str(e.value).endswith(loop)


def test_diamond_bases_are_no_cycle(tmp_path):
    _write(tmp_path / "root.yaml", "seed: 1\n")
    _write(tmp_path / "left.yaml", "_base_: root.yaml\ntrain: {epochs: 2}\n")
    _write(tmp_path / "right.yaml", "_base_: root.yaml\ndata: {batch_size: 4}\n")
    top = _write(tmp_path / "top.yaml", "_base_: [left.yaml, right.yaml]\n")
    cfg = load_config(top)
    assert (cfg.seed, cfg.train.epochs, cfg.data.batch_size) == (1, 2, 4)


def test_unknown_keys_are_named_with_their_file(tmp_path):
    base = _write(tmp_path / "base.yaml", "optim: {lrr: 1.0e-3}\n")
    child = _write(tmp_path / "child.yaml", "_base_: base.yaml\nname: c\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key; allowed: ") as e:
        load_config(child)
    assert str(e.value).startswith(f"{base}: ")
    _write(tmp_path / "base.yaml", "seed: 1\n")
    _write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain: {epoch: 3}\n")
    with pytest.raises(ConfigError, match=r"train\.epoch: unknown key") as e:
        load_config(child)
    assert str(e.value).startswith(f"{child}: ")
    _write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain: {epochs: many}\n")
    with pytest.raises(ConfigError, match=rf"^{child}: train\.epochs: expected an integer"):
        load_config(child)
    _write(tmp_path / "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"\(with --set\): sched\.nme: unknown key"):
        load_config(child, ["sched.nme=step"])


@pytest.mark.parametrize("value,match", [
    ("missing.yaml", r"_base_: .*missing\.yaml: config file not found"),
    ("3", r"_base_: expected a config path or a list"),
    ("[]", r"_base_: expected a config path or a list"),
    ("[a.yaml, {x: 1}]", r"_base_: expected a config path or a list"),
])
def test_bad_base_values(tmp_path, value, match):
    _write(tmp_path / "a.yaml", "seed: 1\n")
    child = _write(tmp_path / "child.yaml", f"_base_: {value}\n")
    with pytest.raises(ConfigError, match=match) as e:
        load_config(child)
    assert str(e.value).startswith(f"{child}: ")


def test_resolved_config_holds_no_base(tmp_path):
    """A run's config.yaml (Config.to_yaml) is the merged config: it loads on its own."""
    _write(tmp_path / "base.yaml", "seed: 5\nmodel: {name: dlsa, options: {d1: 64}}\n")
    child = _write(tmp_path / "child.yaml", "_base_: base.yaml\nname: c\n")
    cfg = load_config(child)
    text = cfg.to_yaml()
    assert "_base_" not in text and "base.yaml" not in text
    (tmp_path / "run").mkdir()
    saved = _write(tmp_path / "run" / "config.yaml", text)  # no base.yaml beside it
    assert load_config(saved) == cfg


def test_method_options_are_checked_through_base(tmp_path):
    """The head's option check (model.options.X: unknown key; allowed: ...) sees the merged
    options: those of the base and those of the file."""
    from mlrkit.engine.builders import build_model

    _write(tmp_path / "base.yaml",
           "model: {name: baseline, pretrained: false, options: {pooling: max}}\n")
    good = _write(tmp_path / "good.yaml", "_base_: base.yaml\nmodel: {options: {dropout: 0.2}}\n")
    cfg = load_config(good)
    assert cfg.model.options == {"pooling": "max", "dropout": 0.2}
    assert build_model(cfg, 3, {}).num_classes == 3
    bad = _write(tmp_path / "bad.yaml", "_base_: base.yaml\nmodel: {options: {dropuot: 0.2}}\n")
    with pytest.raises(ConfigError, match=r"^model\.options\.dropuot: unknown key; "
                                          r"allowed: dropout, pooling$"):
        build_model(load_config(bad), 3, {})
    _write(tmp_path / "base.yaml",
           "model: {name: baseline, pretrained: false, options: {poolin: max}}\n")
    with pytest.raises(ConfigError, match=r"^model\.options\.poolin: unknown key"):
        build_model(load_config(good), 3, {})


def test_delete_replaces_a_base_mapping(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "loss: {name: em, options: {alpha: 0.2, log_eps: 1.0e-5}}\n"
        "optim: {lr: 0.5, lr_mult: {backbone.a: 0.1}}\n")
    (tmp_path / "iun.yaml").write_text(
        "_base_: base.yaml\n"
        "loss: {_delete_: true, name: iun, options: {log_eps: 1.0e-5}}\n"
        "optim: {lr_mult: {_delete_: true}}\n")
    cfg = load_config(tmp_path / "iun.yaml")
    assert cfg.loss.name == "iun" and cfg.loss.options == {"log_eps": 1e-5}  # no alpha
    assert cfg.optim.lr == 0.5 and cfg.optim.lr_mult == {}
    # without the marker the mappings merge key by key
    (tmp_path / "merge.yaml").write_text("_base_: base.yaml\nloss: {name: iun}\n")
    assert load_config(tmp_path / "merge.yaml").loss.options == {"alpha": 0.2, "log_eps": 1e-5}
