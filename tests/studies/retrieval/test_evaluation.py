"""Retrieval evaluation figures / tables against retrieval_metrics, brute force, sklearn (F19, F21)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from sklearn.decomposition import PCA
from sklearn.metrics import average_precision_score

from lit_experiments.metrics import embedding_stats, retrieval_metrics
from lit_experiments.studies.retrieval.figures import (
    compare_checkpoints,
    embedding_map,
    ranking_grid,
    ranking_markdown,
    ranking_rows,
    similarity_histogram,
)


def _clusters(n=60, d=8, c=4, spread=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    centers = torch.randn(c, d, generator=g)
    return centers[labels] + spread * torch.randn(n, d, generator=g), labels


def test_ranking_rows_follow_retrieval_metrics_order_and_precision():
    g = torch.Generator().manual_seed(1)
    emb = torch.randint(-1, 2, (40, 3), generator=g).float()  # integer scores: many ties
    labels = torch.randint(0, 3, (40,), generator=g)
    names = [f"f{i:03d}.png" for i in range(40)]
    scores = emb @ emb.t()
    for k in (1, 4, 9):
        out = retrieval_metrics(emb, emb, labels, labels, ks=(k,), exclude_self=True)
        precisions = []
        for i in range(40):
            rows = ranking_rows(scores[i], labels, names, int(labels[i]), k, exclude_index=i)
            assert [r["rank"] for r in rows] == list(range(1, k + 1))
            keys = [(-r["score"], r["index"]) for r in rows]
            assert keys == sorted(keys) and all(r["index"] != i for r in rows)
            # nothing outside the top k ranks before its last row
            last = keys[-1]
            assert all((-float(scores[i, j]), j) > last for j in range(40) if j != i and j not in {r["index"] for r in rows})
            assert all(r["frame"] == names[r["index"]] and r["label"] == int(labels[r["index"]]) for r in rows)
            if bool(((labels == labels[i]).sum() - 1) > 0):  # retrieval_metrics skips queries without positives
                precisions.append(sum(r["positive"] for r in rows) / k)
        assert np.mean(precisions) == pytest.approx(out[f"precision@{k}"].item(), abs=1e-12)
    ext = ranking_rows(scores[0], labels, names, -1, 3)  # external query: label unknown
    assert [r["positive"] for r in ext] == [None] * 3
    md = ranking_markdown("query f000", ext)
    assert md.startswith("### query f000\n") and md.count("\n| ") == 4 and f"| {ext[0]['score']:.4f} |" in md
    with pytest.raises(ValueError, match=r"k must be in \[1, 39\]"):
        ranking_rows(scores[0], labels, names, 0, 40, exclude_index=0)


def test_ranking_grid_frames_positive_green_negative_red(tmp_path):
    g = torch.Generator().manual_seed(2)
    imgs = torch.full((4, 3, 16, 16), 255, dtype=torch.uint8)  # white thumbnails: only frames are coloured
    query = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=g)
    rows = [{"rank": i + 1, "score": 0.9 - i / 10, "label": i % 2, "positive": i % 2 == 0} for i in range(4)]

    def colour_pixels(path, rgb):
        px = imread(path)[..., :3]
        return int((np.abs(px - np.array(rgb) / 255).max(-1) < 0.02).sum())

    p = ranking_grid(query, imgs, rows, tmp_path / "grid" / "q.png")
    assert p.stat().st_size > 1000
    assert colour_pixels(p, (0x1A, 0x98, 0x50)) > 100 and colour_pixels(p, (0xD7, 0x30, 0x27)) > 100
    only_neg = [dict(r, positive=False) for r in rows]
    p2 = ranking_grid(query, imgs, only_neg, tmp_path / "neg.png")
    assert colour_pixels(p2, (0x1A, 0x98, 0x50)) == 0 and colour_pixels(p2, (0xD7, 0x30, 0x27)) > 100
    unknown = [dict(r, positive=None) for r in rows]
    p3 = ranking_grid(query, imgs, unknown, tmp_path / "ext.png")
    assert colour_pixels(p3, (0xD7, 0x30, 0x27)) == 0 and colour_pixels(p3, (0x96, 0x96, 0x96)) > 100
    with pytest.raises(ValueError, match="k = 4 rows"):
        ranking_grid(query, imgs[:3], rows, tmp_path / "bad.png")


def test_f19_similarity_histogram_matches_brute_force_count(tmp_path):
    emb, labels = _clusters(n=70, spread=0.6, seed=3)
    emb[5] = emb[6] * 1.0001  # a near-duplicate pair: cosine > 0.99
    out = similarity_histogram(emb, labels, tmp_path / "hist.png", bins=20)
    z = emb.double().numpy()
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    pos, neg = [], []
    for i in range(70):
        for j in range(i + 1, 70):
            (pos if labels[i] == labels[j] else neg).append(float(z[i] @ z[j]))
    edges = np.linspace(-1, 1, 21)
    assert out["pos_counts"].tolist() == np.histogram(pos, edges)[0].tolist()
    assert out["neg_counts"].tolist() == np.histogram(neg, edges)[0].tolist()
    assert (out["n_pos_pairs"], out["n_neg_pairs"]) == (len(pos), len(neg))
    assert out["pos_mean"] == pytest.approx(np.mean(pos)) and out["neg_mean"] == pytest.approx(np.mean(neg))
    assert out["pos_mean"] > out["neg_mean"]
    assert out["frac_above_0.99"] == pytest.approx(np.mean(np.array(pos + neg) > 0.99)) and out["frac_above_0.99"] > 0
    assert (tmp_path / "hist.png").stat().st_size > 1000
    # Collapse (F19): all embeddings nearly equal -> every pair above 0.99.
    collapsed = torch.ones(50, 8) + 1e-4 * torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert similarity_histogram(collapsed, labels[:50], tmp_path / "c.png")["frac_above_0.99"] == 1.0
    # Subsampling: seeded, max_samples rows.
    a = similarity_histogram(emb, labels, tmp_path / "s.png", max_samples=30, seed=1)
    b = similarity_histogram(emb, labels, tmp_path / "s.png", max_samples=30, seed=1)
    assert a["n_samples"] == 30 and a["n_pos_pairs"] + a["n_neg_pairs"] == 30 * 29 // 2
    assert torch.equal(a["pos_counts"], b["pos_counts"])


def test_embedding_map_is_pca_and_umap_falls_back(tmp_path, capsys):
    emb, labels = _clusters(n=80, d=6, seed=4)
    coords = embedding_map(emb, labels, tmp_path / "map.png")
    ref = PCA(n_components=2).fit_transform(emb.double().numpy())
    for c in range(2):  # equal up to the sign of each component
        s = np.sign(ref[:, c] @ coords[:, c].numpy())
        np.testing.assert_allclose(coords[:, c].numpy(), s * ref[:, c], atol=1e-9)
    assert (tmp_path / "map.png").stat().st_size > 1000
    try:
        import umap  # noqa: F401

        has_umap = True
    except ImportError:
        has_umap = False
    fallback = embedding_map(emb, labels, tmp_path / "umap.png", method="umap")
    assert fallback.shape == (80, 2)
    if not has_umap:
        assert "umap-learn is not installed" in capsys.readouterr().out
        torch.testing.assert_close(fallback, coords)
    with pytest.raises(ValueError, match="method must be 'pca' or 'umap', got 'tsne'"):
        embedding_map(emb, labels, tmp_path / "x.png", method="tsne")


def _sk_ap(emb, labels):
    s = (emb @ emb.t()).numpy()
    aps = []
    for i in range(len(labels)):
        keep = np.arange(len(labels)) != i
        rel = (labels.numpy()[keep] == int(labels[i])).astype(int)
        aps.append(average_precision_score(rel, s[i, keep]) if rel.any() else math.nan)
    return np.array(aps)


def test_f19_compare_checkpoints_lists_match_sklearn_per_query_ap():
    raw, labels = _clusters(n=50, d=8, c=4, spread=2.0, seed=5)
    centers = torch.stack([raw[labels == c].mean(0) for c in range(4)])
    a = torch.nn.functional.normalize(raw, dim=1)
    # Checkpoint B: tighter clusters for labels 0-2, noisier label 3.
    noise = 3.0 * torch.randn(raw.shape, generator=torch.Generator().manual_seed(6)) * (labels == 3)[:, None]
    b = torch.nn.functional.normalize(raw + 1.5 * centers[labels] * (labels != 3)[:, None] + noise, dim=1)
    ks = (1, 5)
    out_a = retrieval_metrics(a, a, labels, labels, ks=ks, exclude_self=True)
    out_b = retrieval_metrics(b, b, labels, labels, ks=ks, exclude_self=True)
    names = [f"q{i}" for i in range(50)]
    res, md = compare_checkpoints("ep10", out_a, "ep50", out_b, embedding_stats(a), embedding_stats(b), names, top=5)
    ap_a, ap_b = _sk_ap(a, labels), _sk_ap(b, labels)
    delta = ap_b - ap_a
    order = np.argsort(-np.abs(delta), kind="stable")
    exp_imp = [names[i] for i in order if delta[i] > 0][:5]
    exp_deg = [names[i] for i in order if delta[i] < 0][:5]
    assert [q for q, _, _ in res["improved"]] == exp_imp
    assert [q for q, _, _ in res["degraded"]] == exp_deg
    assert res["n_improved"] == int((delta > 0).sum()) and res["n_degraded"] == int((delta < 0).sum())
    assert res["n_improved"] > res["n_degraded"] > 0  # B is better on most, not all, queries
    for q, x, y in res["improved"] + res["degraded"]:
        i = names.index(q)
        assert (x, y) == (pytest.approx(ap_a[i], abs=1e-12), pytest.approx(ap_b[i], abs=1e-12))
    assert res["mean_delta"] == pytest.approx(np.mean(delta), abs=1e-12)
    assert res["metrics"]["map"]["a"] == pytest.approx(np.mean(ap_a), abs=1e-12)
    assert set(res["metrics"]) == {"map", "map@r", "r_precision"} | {f"{m}@{k}" for m in ("precision", "recall", "hit_rate") for k in ks}
    assert res["spread"]["std"]["b"] == pytest.approx(float(embedding_stats(b)["std"]))
    assert f"| map | {np.mean(ap_a):.4f} | {np.mean(ap_b):.4f} |" in md
    assert f"| {exp_imp[0]} |" in md and f"| {exp_deg[0]} |" in md and "| std_expected |" in md
    assert "### Most improved queries" in md and "### Most degraded queries" in md
    with pytest.raises(ValueError, match="same queries: 50, 50 and 3 queries"):
        compare_checkpoints("a", out_a, "b", out_b, {}, {}, names[:3])


def test_embedding_map_shows_every_label_and_no_class_hides_another(tmp_path, monkeypatch):
    """Issue 25: the map drew classes one after another, opaque (the last class hid the others where they
    overlapped), and dropped the legend past 20 labels. Now: one scatter in a shuffled order, half transparent,
    a legend entry for every label (unlabelled -1 in grey)."""
    from matplotlib.figure import Figure

    saved = {}
    real_savefig = Figure.savefig

    def keep(self, *args, **kwargs):
        saved["fig"] = self
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    g = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(400, 6, generator=g), torch.randint(-1, 25, (400,), generator=g)
    coords = embedding_map(emb, labels, tmp_path / "map.png")
    ax = saved["fig"].axes[0]
    entries = [t.get_text() for t in ax.get_legend().get_texts()]
    assert entries == ["unlabelled"] + [str(u) for u in range(25)]
    points = [c for c in ax.collections if len(c.get_offsets())]
    assert len(points) == 1 and len(points[0].get_offsets()) == 400 and points[0].get_alpha() < 1
    where = {tuple(np.round(c, 6)): j for j, c in enumerate(coords.numpy())}
    drawn = [int(labels[where[tuple(np.round(o, 6))]]) for o in np.asarray(points[0].get_offsets())]
    assert sorted(drawn) != drawn and sorted(drawn, reverse=True) != drawn  # not drawn class after class
    assert "colours repeat" in ax.get_title()
