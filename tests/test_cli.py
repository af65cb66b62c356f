"""The command line: help texts, and one clear line (no traceback) for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlrkit.cli import main

SUBCOMMANDS = ["train", "eval", "cv", "predict", "extract-features", "demo", "data", "list-models",
               "embed-labels", "export", "push"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlrkit", *args], capture_output=True,
                          text=True, timeout=300)


def test_help_lists_subcommands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in SUBCOMMANDS:
        assert cmd in r.stdout


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_each_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: mlrkit " + cmd in capsys.readouterr().out


def test_list_models_names_methods_and_backbones(capsys):
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "efficientnet_lite0" in out


def _one_line_error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    first = err.strip().splitlines()[0]
    for n in needles:
        assert n in first, first
    return first


def test_bad_inputs_give_one_line(tmp_path, capsys):
    _one_line_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml")],
                    "missing.yaml", "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: [\n")
    _one_line_error(capsys, ["train", "--config", str(bad)], "bad.yaml", "YAML")
    unk = tmp_path / "unk.yaml"
    unk.write_text("model: {name: nosuchmethod, backbone: cached}\n"
                   "data: {train: {name: nosuchdata}, val: {name: nosuchdata}}\n")
    _one_line_error(capsys, ["train", "--config", str(unk)], "nosuchdata", "available")
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "none")], "none")
    _one_line_error(capsys, ["predict", "--checkpoint", str(tmp_path / "no.safetensors"),
                             "x.jpg"], "no.safetensors", "not found")


def test_unknown_method_named(capsys):
    from mlrkit import create_model

    with pytest.raises(KeyError, match="unknown method 'nosuch'.*baseline"):
        create_model("nosuch", backbone="cached", in_dim=3, num_classes=2)


def test_debug_shows_traceback(tmp_path):
    r = run("--debug", "train", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode != 0 and "Traceback" in r.stderr
    r = run("train", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
