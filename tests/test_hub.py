"""Sharing through the Hugging Face Hub, with a local folder standing in for the hub.

No hub is reachable here. ``HfApi.create_repo`` / ``create_branch`` / ``upload_folder`` are
replaced by a fake that commits the uploaded files straight into huggingface_hub's cache
layout (``models--owner--name/{blobs,snapshots/<commit>,refs/<branch>}``) in a temporary
``HF_HUB_CACHE``; downloads then run huggingface_hub's real ``snapshot_download`` in offline
mode (``HF_HUB_OFFLINE=1``), which serves them from that cache as it would after a download.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import DATA, make_color_images
from mlrkit import cli

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import constants  # noqa: E402

PHOTOS = DATA / "coco128" / "images" / "train2017"


class FakeHub:
    """Commits land in the cache layout that huggingface_hub reads (what a download of the
    same commit would have left there)."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.repos: dict[str, dict] = {}
        self.calls: list[str] = []

    def folder(self, repo_id: str) -> Path:
        return self.cache / ("models--" + repo_id.replace("/", "--"))

    def head(self, repo_id: str, branch: str) -> str | None:
        ref = self.folder(repo_id) / "refs" / branch
        return ref.read_text() if ref.exists() else None

    def create_repo(self, api, repo_id, *, private=None, exist_ok=False, repo_type=None, **kw):
        self.calls.append("create_repo")
        if repo_id in self.repos and not exist_ok:
            raise RuntimeError("exists")
        self.repos.setdefault(repo_id, {"private": bool(private)})
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, api, repo_id, *, branch, exist_ok=False, repo_type=None, **kw):
        self.calls.append("create_branch")
        start = self.head(repo_id, "main")
        if start is not None and self.head(repo_id, branch) is None:
            (self.folder(repo_id) / "refs" / branch).write_text(start)

    def upload_folder(self, api, *, repo_id, folder_path, revision=None, commit_message=None,
                      repo_type=None, **kw):
        self.calls.append("upload_folder")
        assert repo_id in self.repos, "upload_folder before create_repo"
        branch = revision or "main"
        root = self.folder(repo_id)
        parent = self.head(repo_id, branch)
        files = {}
        if parent is not None:  # a commit keeps the files it does not replace
            files = {p.name: p.read_bytes() for p in (root / "snapshots" / parent).iterdir()}
        files.update({p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
        digest = hashlib.sha1((parent or "").encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        commit = digest.hexdigest()
        snap = root / "snapshots" / commit
        snap.mkdir(parents=True)
        (root / "blobs").mkdir(exist_ok=True)
        (root / "refs").mkdir(exist_ok=True)
        for name, data in files.items():
            blob = hashlib.sha256(data).hexdigest()
            (root / "blobs" / blob).write_bytes(data)
            (snap / name).symlink_to(Path("..") / ".." / "blobs" / blob)
        (root / "refs" / branch).write_text(commit)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{commit}",
                               message=commit_message)


@pytest.fixture()
def hub(tmp_path, monkeypatch) -> FakeHub:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    fake = FakeHub(cache)
    for name in ("create_repo", "create_branch", "upload_folder"):
        method = getattr(fake, name)
        monkeypatch.setattr(hf.HfApi, name,
                            lambda self, *a, _m=method, **kw: _m(self, *a, **kw))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return fake


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A real one-epoch training run (pooled-FC head on EfficientNet-Lite0, 3 colour labels)."""
    tmp = tmp_path_factory.mktemp("run")
    labels = make_color_images(tmp / "imgs", 8, size=32)
    names = str(tmp / "imgs" / "names.txt")
    cfg = {"name": "run", "seed": 0, "output_dir": str(tmp / "runs"),
           "model": {"name": "baseline", "backbone": "efficientnet_lite0", "pretrained": False},
           "data": {"train": {"name": "list", "labels_file": str(labels), "names": names},
                    "val": {"name": "list", "labels_file": str(labels), "names": names},
                    "image_size": 64, "batch_size": 8, "num_workers": 0},
           "train": {"epochs": 1, "progress": False, "amp": "none"}}
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["train", "--config", str(path), "--no-report"]) == 0
    return tmp / "runs" / "run"


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_push_uploads_checkpoint_bytes_and_a_model_card(run, hub, capsys):
    capsys.readouterr()
    assert cli.main(["push", str(run), "me/tiny", "--private"]) == 0
    out = capsys.readouterr().out
    commit = hub.head("me/tiny", "main")
    assert commit and f"me/tiny/commit/{commit}" in out and "hf-hub:me/tiny" in out
    assert hub.repos["me/tiny"]["private"] is True
    snap = hub.folder("me/tiny") / "snapshots" / commit
    assert sorted(p.name for p in snap.iterdir()) == [
        "README.md", "best.json", "best.safetensors", "config.yaml", "log.csv", "metrics.json"]
    for name in ("best.safetensors", "best.json", "config.yaml", "metrics.json"):
        assert (snap / name).read_bytes() == (run / name).read_bytes(), name
    assert not (snap / "train_state.pt").exists()  # optimizer state stays home

    card = (snap / "README.md").read_text()
    meta = json.loads((run / "best.json").read_text())
    front = _front_matter(card)
    assert front["library_name"] == "mlrkit" and "baseline" in front["tags"]
    for i, (name, thr) in enumerate(zip(["red", "green", "blue"], meta["thresholds"])):
        assert f"| {i} | {name} | {thr:.3f} |" in card
    header, _, values = card.split("## Metrics")[1].split("\n\n")[2].splitlines()
    table = dict(zip(header.strip("| ").split(" | "), values.strip("| ").split(" | ")))
    assert table["mAP"] == f"{100 * meta['metrics']['mAP']:.2f}"
    assert table["OF1"] == f"{100 * meta['metrics']['OF1']:.2f}"
    assert "efficientnet_lite0" in card and "hf-hub:me/tiny" in card
    cfg_block = card.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(cfg_block) == meta["config"]


def test_push_to_a_branch_keeps_main(run, hub, capsys):
    assert cli.main(["push", str(run), "me/tiny"]) == 0
    main = hub.head("me/tiny", "main")
    assert cli.main(["push", str(run / "last.safetensors"), "me/tiny", "--revision", "v2",
                     "--message", "last epoch"]) == 0
    v2 = hub.head("me/tiny", "v2")
    assert hub.head("me/tiny", "main") == main and v2 != main
    assert hub.calls == ["create_repo", "upload_folder", "create_repo", "create_branch",
                         "upload_folder"]
    from mlrkit.engine.checkpoint import resolve_checkpoint

    # v2 holds both checkpoints (branched from main); a run folder's best comes first
    assert resolve_checkpoint("hf-hub:me/tiny@v2").parent.name == v2
    assert resolve_checkpoint("hf-hub:me/tiny").parent.name == main
    assert "hf-hub:me/tiny@v2" in capsys.readouterr().out


def test_dry_run_writes_the_files_and_uploads_nothing(run, hub, tmp_path, capsys):
    out = tmp_path / "staged"
    assert cli.main(["push", str(run), "me/tiny", "--dry-run", str(out)]) == 0
    assert hub.calls == [] and hub.head("me/tiny", "main") is None
    assert (out / "best.safetensors").read_bytes() == (run / "best.safetensors").read_bytes()
    assert "README.md" in capsys.readouterr().out
    assert cli.main(["push", str(run), "me/a/b"]) == 1
    assert "me/a/b: expected a repository id owner/name" in capsys.readouterr().err
    assert hub.calls == []


@pytest.mark.skipif(not PHOTOS.is_dir(), reason="coco128 photos not found")
def test_predict_from_the_hub_equals_the_local_run(run, hub, tmp_path, capsys):
    photo = str(PHOTOS / "000000000009.jpg")
    assert cli.main(["push", str(run), "me/tiny"]) == 0
    capsys.readouterr()
    assert cli.main(["predict", "--checkpoint", str(run), "--json", photo]) == 0
    local = json.loads(capsys.readouterr().out)
    # a fresh process that knows the hub only through the environment, offline
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub.cache),
           "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "mlrkit", "predict", "--checkpoint",
                          "hf-hub:me/tiny", "--json", photo], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    remote = json.loads(res.stdout)
    assert remote == local
    assert set(local["scores"]) == {"red", "green", "blue"}

    from mlrkit.engine.evaluation import evaluate_checkpoint

    # eval goes through the same resolver: same numbers from the hub copy
    assert evaluate_checkpoint("hf-hub:me/tiny")[0].to_dict() == \
        evaluate_checkpoint(run)[0].to_dict()


def test_offline_and_not_cached_is_one_clear_line(hub, capsys):
    img = str(PHOTOS / "000000000009.jpg")
    assert cli.main(["predict", "--checkpoint", "hf-hub:someone/missing@v1", img]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1].startswith("(run again with --debug")
    assert err[0].startswith("mlrkit predict: error: hf-hub:someone/missing@v1")
    assert "not in the local Hugging Face cache" in err[0] and "HF_HUB_OFFLINE" in err[0]
    assert str(hub.cache) in err[0]


def test_a_repository_without_a_checkpoint_is_named(hub, tmp_path):
    from mlrkit.engine.checkpoint import CheckpointError, resolve_checkpoint

    other = tmp_path / "other"
    other.mkdir()
    (other / "model.json").write_text("{}")
    hf.HfApi().create_repo("me/other")
    hf.HfApi().upload_folder(repo_id="me/other", folder_path=str(other))
    with pytest.raises(CheckpointError, match=r"hf-hub:me/other: .*not an mlrkit checkpoint"):
        resolve_checkpoint("hf-hub:me/other")


@pytest.mark.parametrize("text,repo,rev", [
    ("hf-hub:me/tiny", "me/tiny", None), ("hf-hub:me/tiny@v1.0", "me/tiny", "v1.0"),
    ("hf-hub:gpt2", "gpt2", None), ("hf-hub:me/a.b-c_d@refs/pr/1", "me/a.b-c_d", "refs/pr/1")])
def test_hub_references_parse(text, repo, rev):
    from mlrkit.hub import parse_hub_ref

    ref = parse_hub_ref(text)
    assert (ref.repo_id, ref.revision) == (repo, rev) and str(ref) == text


@pytest.mark.parametrize("text", ["hf-hub:", "hf-hub:me/tiny@", "hf-hub:a/b/c", "hf-hub:/x",
                                  "hf-hub:me/ti ny"])
def test_bad_hub_references_are_refused(text):
    from mlrkit.hub import parse_hub_ref

    with pytest.raises(ValueError, match="expected hf-hub:owner/name"):
        parse_hub_ref(text)


def test_push_help_imports_neither_torch_nor_the_hub():
    code = ("import sys\nfrom mlrkit import cli\ntry:\n    cli.main(['push', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'huggingface_hub') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "REPO_ID" in res.stdout and res.stdout.strip().endswith("[]")
