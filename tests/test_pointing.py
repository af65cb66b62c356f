"""Pointing game (mlrkit.metrics) on hand-computed maps and boxes, its centre-prior and
uniform baselines worked out by hand, and the boxes exposed by the yolo and mosaic loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlrkit.metrics import centre_prior_map, pointing_baselines, pointing_game


def one_hot(n: int, c: int, h: int, w: int, peaks: dict[tuple[int, int], tuple[int, int]],
            ) -> np.ndarray:
    """Maps of zeros with a 1 at ``peaks[(image, class)] = (row, col)``."""
    a = np.zeros((n, c, h, w))
    for (i, k), (r, q) in peaks.items():
        a[i, k, r, q] = 1.0
    return a


# ------------------------------------------------------------------------- hand-made cases
def test_hits_by_hand_overall_and_class_mean() -> None:
    # 2 images, 3 classes, 2x2 maps; cell centres at 0.25 / 0.75 on each axis
    att = one_hot(2, 3, 2, 2, {(0, 0): (0, 1),   # (x .75, y .25): inside class 0's box
                               (0, 1): (1, 1),   # (.75, .75): outside class 1's box
                               (1, 0): (1, 0),   # (.25, .75): inside the 2nd class-0 box
                               (1, 2): (0, 0)})  # (.25, .25): inside class 2's box
    boxes = [
        [(0, 0.5, 0.0, 1.0, 0.5), (1, 0.0, 0.0, 0.5, 1.0)],
        [(0, 0.6, 0.6, 0.9, 0.9), (0, 0.0, 0.5, 0.5, 1.0), (2, 0.0, 0.0, 1.0, 1.0)],
    ]
    r = pointing_game(att, boxes)
    # pairs: (0,0) hit, (0,1) miss, (1,0) hit (any of its boxes), (1,2) hit
    assert r.num_pairs == 4 and r.num_images == 2 and r.hits == 3
    assert r.hit_rate == pytest.approx(3 / 4)
    np.testing.assert_array_equal(r.per_class, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(r.pairs_per_class, [2, 1, 1])
    assert r.class_mean == pytest.approx(2 / 3)
    np.testing.assert_array_equal(r.pair_image, [0, 0, 1, 1])
    np.testing.assert_array_equal(r.pair_class, [0, 1, 0, 2])
    np.testing.assert_array_equal(r.pair_hit, [1, 0, 1, 1])
    assert r.to_dict()["hit_rate"] == pytest.approx(0.75)


def test_class_without_box_is_not_a_pair_and_per_class_is_nan() -> None:
    att = one_hot(1, 3, 2, 2, {(0, 1): (0, 0)})
    r = pointing_game(att, [[(1, 0.0, 0.0, 0.5, 0.5)]])
    assert r.num_pairs == 1 and r.hit_rate == 1.0 and r.class_mean == 1.0
    assert np.isnan(r.per_class[[0, 2]]).all()


def test_peak_is_the_cell_centre_scaled_by_image_over_map_size() -> None:
    # 3x4 map (h=3, w=4): cell (row 2, col 1) has centre x = 1.5 / 4 = .375, y = 2.5 / 3 = .8333
    att = one_hot(1, 1, 3, 4, {(0, 0): (2, 1)})
    assert pointing_game(att, [[(0, 0.37, 0.83, 0.38, 0.84)]]).hit_rate == 1.0
    assert pointing_game(att, [[(0, 0.38, 0.80, 0.50, 0.90)]]).hit_rate == 0.0
    assert pointing_game(att, [[(0, 0.30, 0.84, 0.50, 0.90)]]).hit_rate == 0.0


def test_boxes_are_half_open() -> None:
    # 2x2 map: the peak's centre (.75, .25) is on the left edge of box A, the right edge of B
    att = one_hot(1, 2, 2, 2, {(0, 0): (0, 1), (0, 1): (0, 1)})
    r = pointing_game(att, [[(0, 0.75, 0.0, 1.0, 0.5), (1, 0.0, 0.0, 0.75, 0.5)]])
    np.testing.assert_array_equal(r.pair_hit, [1.0, 0.0])


def test_pixel_boxes_with_image_sizes_equal_normalized_boxes() -> None:
    rng = np.random.default_rng(0)
    att = rng.random((3, 4, 5, 6))
    sizes = np.array([[640, 480], [100, 300], [224, 224]])
    norm = []
    for i in range(3):
        x1, y1 = rng.random(2) * 0.5
        x2, y2 = x1 + rng.random() * 0.5, y1 + rng.random() * 0.5
        norm.append([(i % 4, x1, y1, x2, y2), ((i + 1) % 4, 0, 0, 1, 1)])
    pix = [[(k, x1 * w, y1 * h, x2 * w, y2 * h) for k, x1, y1, x2, y2 in b]
           for b, (w, h) in zip(norm, sizes.tolist())]
    a, b = pointing_game(att, norm), pointing_game(att, pix, image_sizes=sizes)
    np.testing.assert_array_equal(a.pair_hit, b.pair_hit)


def test_ties_split_counts_the_tied_cells_inside_first_takes_row_major() -> None:
    att = np.zeros((1, 1, 2, 2))
    att[0, 0, 0, 0] = att[0, 0, 1, 1] = 2.0  # two maxima: (.25, .25) and (.75, .75)
    boxes = [[(0, 0.5, 0.5, 1.0, 1.0)]]      # holds (.75, .75) only
    assert pointing_game(att, boxes).hit_rate == 0.5
    assert pointing_game(att, boxes, ties="first").hit_rate == 0.0  # first = (0, 0)
    assert pointing_game(att, [[(0, 0, 0, 0.5, 0.5)]], ties="first").hit_rate == 1.0


def test_torch_padded_and_list_inputs_agree() -> None:
    rng = np.random.default_rng(1)
    att = rng.random((2, 3, 4, 4)).astype(np.float32)
    boxes = [[(0, 0.1, 0.1, 0.6, 0.7), (2, 0.5, 0.0, 1.0, 0.5)], [(1, 0.0, 0.2, 0.4, 1.0)]]
    padded = torch.full((2, 2, 5), -1.0)
    padded[0] = torch.tensor(boxes[0])
    padded[1, 0] = torch.tensor(boxes[1][0])
    a = pointing_game(att, boxes)
    b = pointing_game(torch.from_numpy(att), padded)
    c = pointing_game(torch.from_numpy(att).to(torch.bfloat16), [np.asarray(x) for x in boxes])
    np.testing.assert_array_equal(a.pair_hit, b.pair_hit)
    assert a.num_pairs == c.num_pairs == 3


def test_an_oracle_map_scores_one() -> None:
    # high inside each class's box: every pair hits, whatever the boxes
    rng = np.random.default_rng(2)
    n, c, h, w = 6, 4, 7, 9
    boxes, att = [], rng.random((n, c, h, w)) * 0.1
    xs, ys = (np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h
    for i in range(n):
        rows = []
        for k in rng.choice(c, size=2, replace=False):
            x1, y1 = rng.random(2) * 0.6
            x2, y2 = x1 + 0.3, y1 + 0.3
            rows.append((k, x1, y1, x2, y2))
            inside = ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None]
            att[i, k] += inside
        boxes.append(rows)
    assert pointing_game(att, boxes).hit_rate == 1.0


# ------------------------------------------------------------------------------ baselines
def test_centre_prior_peaks_at_the_centre_cell() -> None:
    m = centre_prior_map(3, 5)
    assert np.unravel_index(m.argmax(), m.shape) == (1, 2)
    assert np.count_nonzero(m == m.max()) == 1
    m = centre_prior_map(4, 4)  # even sides: the 4 middle cells tie exactly
    assert set(zip(*np.nonzero(m == m.max()))) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    np.testing.assert_array_equal(m, m[::-1, ::-1])


def test_centre_prior_and_uniform_by_hand() -> None:
    boxes = [
        # 3x3 map: centre cell (.5, .5) inside; cells with x in {.1667, .5}, y in {.5}: 2 / 9
        [(0, 0.0, 0.4, 0.6, 0.6)],
        # centre (.5, .5) not inside [0, .5); cells x in {.1667}, y in all three: 3 / 9
        [(1, 0.0, 0.0, 0.5, 1.0),
         # class 1 again, overlapping: the union adds x = .5 for y = .1667 only -> 4 / 9;
         # the centre (.5, .5) is still outside
         (1, 0.3, 0.0, 0.6, 0.3)],
    ]
    b = pointing_baselines(boxes, num_classes=2, map_size=(3, 3))
    cp, un = b["centre prior"], b["uniform"]
    np.testing.assert_array_equal(cp.pair_hit, [1.0, 0.0])
    np.testing.assert_allclose(un.pair_hit, [2 / 9, 4 / 9])
    assert un.hit_rate == pytest.approx(1 / 3) and un.class_mean == pytest.approx(1 / 3)
    # 4x4 map: the centre prior's four tied middle cells (.375 / .625), split: 2 of 4 inside
    b4 = pointing_baselines([[(0, 0.5, 0.0, 1.0, 1.0)]], 1, (4, 4))
    assert b4["centre prior"].hit_rate == 0.5 and b4["uniform"].hit_rate == 0.5
    assert pointing_baselines([[(0, 0.5, 0.0, 1.0, 1.0)]], 1, (4, 4),
                              ties="first")["centre prior"].hit_rate == 0.0  # cell (1, 1)


def test_uniform_equals_the_mean_over_every_peak_position() -> None:
    # the random-peak expectation, enumerated: one map per possible peak cell
    rng = np.random.default_rng(3)
    h, w = 5, 6
    boxes = [[(0, *sorted(rng.random(2)), *sorted(rng.random(2)))] for _ in range(4)]
    boxes = [[(k, x1, y1, x2, y2) for k, x1, x2, y1, y2 in b] for b in boxes]
    boxes.append([(0, 0.1, 0.1, 0.2, 0.2)])  # no cell centre inside: uniform 0
    per_peak = []
    for r in range(h):
        for q in range(w):
            att = np.zeros((len(boxes), 1, h, w))
            att[:, 0, r, q] = 1
            per_peak.append(pointing_game(att, boxes).pair_hit)
    want = np.mean(per_peak, axis=0)
    got = pointing_baselines(boxes, 1, (h, w))["uniform"]
    np.testing.assert_allclose(got.pair_hit, want, atol=1e-12)
    assert got.pair_hit[-1] == 0.0
    # a constant attention map is the uniform baseline
    flat = pointing_game(np.ones((len(boxes), 1, h, w)), boxes)
    np.testing.assert_allclose(flat.pair_hit, want, atol=1e-12)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("att, boxes, kwargs, match", [
    (np.zeros((2, 2, 2)), [[], []], {}, r"\(N, C, h, w\)"),
    (np.zeros((2, 2, 0, 2)), [[], []], {}, r"non-empty"),
    (np.zeros((2, 2, 2, 2)), [[]], {}, r"1 images but attention has 2"),
    (np.zeros((1, 2, 2, 2)), [[(0, 0, 0, 1)]], {}, r"\(K, 5\)"),
    (np.zeros((1, 2, 2, 2)), [[(2, 0, 0, 1, 1)]], {}, r"outside 0..1"),
    (np.zeros((1, 2, 2, 2)), [[(0.5, 0, 0, 1, 1)]], {}, r"outside 0..1"),
    (np.zeros((1, 2, 2, 2)), [[(0, 0, 0, np.nan, 1)]], {}, r"non-finite"),
    (np.zeros((1, 2, 2, 2)), [[(0, 0.6, 0, 0.5, 1)]], {}, r"x1 <= x2"),
    (np.zeros((1, 2, 2, 2)), [[(0, 10, 20, 100, 200)]], {}, r"need image_sizes"),
    (np.zeros((1, 2, 2, 2)), [[(0, 10, 20, 100, 200)]], {"image_sizes": [[50, 50]]},
     r"inside the image"),
    (np.zeros((1, 2, 2, 2)), [[(0, 0, 0, 1, 1)]], {"image_sizes": [640, 480]}, r"\(N, 2\)"),
    (np.zeros((1, 2, 2, 2)), [[(0, 0, 0, 1, 1)]], {"image_sizes": [[0, 480]]}, r"positive"),
    (np.zeros((1, 2, 2, 2)), [[]], {}, r"no \(image, class\) pair"),
    (np.zeros((1, 2, 2, 2)), [[(0, 0, 0, 1, 1)]], {"ties": "random"}, r"ties"),
    (np.full((1, 2, 2, 2), np.nan), [[(1, 0, 0, 1, 1)]], {}, r"image 0, class 1"),
    (np.zeros((1, 2, 2, 2)), torch.zeros(1, 2, 4), {}, r"\(N, K, 5\)"),
])
def test_bad_input_raises(att, boxes, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        pointing_game(att, boxes, **kwargs)


def test_nan_in_a_map_without_a_pair_is_not_read() -> None:
    att = np.zeros((1, 2, 2, 2))
    att[0, 0] = np.nan
    assert pointing_game(att, [[(1, 0, 0, 1, 1)]]).hit_rate == 1.0


# ---------------------------------------------------------------------------- yolo boxes
def test_yolo_boxes_follow_ids_folds_and_targets(data_dir: Path) -> None:
    from mlrkit.data import load_dataset
    from mlrkit.data.yolo import load_yolo_boxes

    root = data_dir / "coco128"
    full = load_dataset("yolo", root=str(root), split="train2017")
    val = load_dataset("yolo", root=str(root), split="train2017", fold="val")
    bf, bv = load_yolo_boxes(full), load_yolo_boxes(val)
    assert len(bf) == len(full) and len(bv) == len(val) == 32
    row = {s: i for i, s in enumerate(full.ids)}
    for i, stem in enumerate(val.ids):  # a fold's boxes are its own rows' boxes
        np.testing.assert_array_equal(bv[i], bf[row[stem]])
    t = full.targets.numpy()
    for i in range(len(full)):  # the classes with boxes are the positive labels
        assert set(bf[i][:, 0].astype(int)) == set(np.flatnonzero(t[i] == 1))
    # one file read directly: class cx cy w h -> corners
    lines = (root / "labels" / "train2017" / f"{full.ids[0]}.txt").read_text().split("\n")
    k, cx, cy, w, h = (float(v) for v in lines[0].split())
    np.testing.assert_allclose(bf[0][0], [k, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    assert all(((b[:, 1:] >= 0) & (b[:, 1:] <= 1)).all() for b in bf)


def test_yolo_boxes_polygons_background_and_bad_lines(tmp_path: Path) -> None:
    from mlrkit.data import DataError, load_dataset
    from mlrkit.data.yolo import load_yolo_boxes

    lab = tmp_path / "labels" / "val"
    lab.mkdir(parents=True)
    (lab / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.1 0.2 0.3 0.1 0.2 0.6\n\n")
    (lab / "b.txt").write_text("")
    ds = load_dataset("yolo", root=str(tmp_path), split="val", names=["x", "y"])
    a, b = load_yolo_boxes(ds)
    np.testing.assert_allclose(a, [[0, 0.4, 0.3, 0.6, 0.7], [1, 0.1, 0.1, 0.3, 0.6]])
    assert b.shape == (0, 5)
    (lab / "b.txt").write_text("1 0.5 zero 0.1 0.1\n")  # a label for the loader, no box
    ds = load_dataset("yolo", root=str(tmp_path), split="val", names=["x", "y"])
    with pytest.raises(DataError, match=r"b.txt:1"):
        load_yolo_boxes(ds)
    other = ds.subset(range(len(ds)))
    other.info["dataset"] = "voc2007"
    with pytest.raises(DataError, match="yolo dataset"):
        load_yolo_boxes(other)


def _has_fashion() -> bool:
    from mlrkit.data.mosaic import resolve_root

    return (resolve_root(None) / "t10k-images-idx3-ubyte.gz").is_file()


# -------------------------------------------------------------------------- mosaic boxes
@pytest.mark.skipif(not _has_fashion(), reason="Fashion-MNIST photos not installed")
def test_mosaic_cells_hold_the_items_and_the_photos() -> None:
    from mlrkit.data import load_dataset

    ds = load_dataset("fashion_mosaic", split="test", num_images=12, grid=3, image_size=90,
                      max_items=4)
    cells, items = ds.boxes("cell", normalized=False), ds.boxes("item", normalized=False)
    assert len(cells) == len(items) == len(ds)
    edges = set(ds.cell_edges.tolist())
    for i in range(len(ds)):
        c, it = cells[i], items[i]
        np.testing.assert_array_equal(c[:, 0], it[:, 0])
        assert set(c[:, 0].astype(int)) == set(np.flatnonzero(ds.targets[i].numpy() == 1))
        assert set(c[:, 1:].ravel().tolist()) <= edges  # on the grid
        assert ((c[:, 1:3] <= it[:, 1:3]) & (it[:, 3:] <= c[:, 3:])).all()  # item in cell
        assert len({tuple(r) for r in c[:, 1:].tolist()}) == len(c)  # one item per cell
        # every lit pixel of the drawn mosaic is inside an item box
        img = np.asarray(ds.load_image(i))[..., 0]
        lit = np.zeros_like(img, dtype=bool)
        for _, x1, y1, x2, y2 in it.astype(int):
            lit[y1:y2, x1:x2] = True
        assert not (img[~lit] > 0).any()
        np.testing.assert_allclose(ds.item_boxes(i)[:, 1:], c[:, 1:] / 90)
    with pytest.raises(ValueError, match="kind"):
        ds.item_boxes(0, kind="photo")
