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
