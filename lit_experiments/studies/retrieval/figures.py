"""Figures and tables of the retrieval study's evaluation (F19, F21): pure functions of tensors, drawn by
:mod:`.evaluation`.

* :func:`ranking_rows` / :func:`ranking_markdown` / :func:`ranking_grid`: one query's top-k results in the
  ranking of :func:`lit_experiments.metrics.retrieval_metrics` (score descending, then gallery index
  ascending), as rows, a Markdown table and a thumbnail grid.
* :func:`similarity_histogram`: cosine similarity of positive vs negative pairs; the seed's collapse
  symptom is every score above 0.99 (F19).
* :func:`embedding_map`: a 2-D map (PCA, or UMAP when umap-learn is installed) coloured by label.
* :func:`compare_checkpoints`: two checkpoints on the same queries, side by side, with the most improved
  and most degraded queries (per-query AP).

Figures are drawn on ``matplotlib.figure.Figure`` objects (Agg canvas), never through pyplot, so no global
backend is set and nothing is shown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from lit_experiments.metrics import compare_per_query_ap

_FRAME = {True: "#1a9850", False: "#d73027", None: "#969696"}  # positive, negative, query label unknown
_HEADLINE = ("map", "map@r", "r_precision", "precision@", "recall@", "hit_rate@")
_SPREAD = ("std", "std_expected", "std_ratio", "cos_p05", "cos_p50", "cos_p95")


def ranking_rows(
    scores_row: Tensor,
    gallery_labels: Tensor,
    gallery_names: Sequence[str],
    query_label: int,
    k: int,
    exclude_index: int | None = None,
) -> list[dict]:
    """Top ``k`` gallery items of one query, ranked by score descending then gallery index ascending.

    Args:
        scores_row: ``(Ng,)`` scores of the query against the gallery; gallery_labels: int ``(Ng,)``;
        gallery_names: ``Ng`` display names (e.g. frame paths); query_label: ``-1`` when unknown
        (an external query); exclude_index: a gallery index left out (the query itself).

    Returns:
        ``k`` dicts ``{"rank" (1-based), "index" (gallery index), "frame", "score", "label",
        "positive" (bool, or None when the query label is -1)}``.
    """
    ng = scores_row.shape[0]
    if scores_row.dim() != 1 or gallery_labels.shape != (ng,) or len(gallery_names) != ng:
        raise ValueError(
            f"scores_row (Ng,), gallery_labels (Ng,) and Ng gallery_names expected, got {tuple(scores_row.shape)}, "
            f"{tuple(gallery_labels.shape)} and {len(gallery_names)} names"
        )
    keep = torch.arange(ng)
    if exclude_index is not None:
        keep = keep[keep != exclude_index]
    if not 1 <= k <= keep.numel():
        raise ValueError(f"k must be in [1, {keep.numel()}] (gallery items left), got {k}")
    vals = scores_row.detach().cpu()[keep]
    order = torch.sort(vals, descending=True, stable=True).indices[:k]  # stable: index asc within ties
    rows = []
    for rank, j in enumerate(keep[order].tolist(), start=1):
        label = int(gallery_labels[j])
        rows.append(
            {
                "rank": rank,
                "index": j,
                "frame": str(gallery_names[j]),
                "score": float(scores_row[j]),
                "label": label,
                "positive": None if int(query_label) == -1 else label == int(query_label),
            }
        )
    return rows


def ranking_markdown(title: str, rows: Sequence[dict]) -> str:
    """Markdown table of :func:`ranking_rows` under a ``###`` title (positive: yes / no / - if unknown)."""
    mark = {True: "yes", False: "no", None: "-"}
    lines = [f"### {title}", "", "| rank | frame | score | label | positive |", "|---:|---|---:|---:|:---:|"]
    lines += [f"| {r['rank']} | {r['frame']} | {r['score']:.4f} | {r['label']} | {mark[r['positive']]} |" for r in rows]
    return "\n".join(lines) + "\n"


def _thumb(ax, image: Tensor, title: str, color: str | None) -> None:
    if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (3, H, W), got {image.dtype} {tuple(image.shape)}")
    ax.imshow(image.permute(1, 2, 0).cpu().numpy())
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)
    for spine in ax.spines.values():
        spine.set_visible(color is not None)
        if color is not None:
            spine.set_edgecolor(color)
            spine.set_linewidth(4)


def ranking_grid(
    query_image: Tensor, gallery_images: Tensor, rows: Sequence[dict], path: str | Path, ncols: int = 6
) -> Path:
    """PNG grid: the query first, then each result titled ``#rank s=score label`` and framed green
    (positive), red (negative) or grey (query label unknown). ``gallery_images`` (k, 3, H, W) uint8 is
    aligned with ``rows``. Returns the path written."""
    if gallery_images.dim() != 4 or gallery_images.shape[0] != len(rows):
        raise ValueError(f"gallery_images must be (k, 3, H, W) with k = {len(rows)} rows, got {tuple(gallery_images.shape)}")
    n = len(rows) + 1
    cols = min(ncols, n)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(1.7 * cols, 1.9 * nrows), dpi=100)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    _thumb(axes[0], query_image, "query", None)
    for ax, img, r in zip(axes[1:], gallery_images, rows):
        _thumb(ax, img, f"#{r['rank']} s={r['score']:.3f} y={r['label']}", _FRAME[r["positive"]])
    for ax in axes[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def similarity_histogram(
    emb: Tensor, labels: Tensor, path: str | Path, bins: int = 50, max_samples: int = 4000, seed: int = 0
) -> dict[str, Tensor | float | int]:
    """Cosine similarities of positive (same label) vs negative pairs, overlaid histograms as a PNG.

    Distinct pairs ``i < j`` of a seeded subset of ``max_samples`` rows (all rows when fewer; the subset is
    ``torch.randperm`` of a ``seed``-ed generator). Histograms over [-1, 1] with ``bins`` bins
    (``torch.histc``). Returns ``pos_counts`` / ``neg_counts`` int64 (bins,), ``edges`` (bins + 1,),
    ``n_pos_pairs``, ``n_neg_pairs``, ``pos_mean``, ``neg_mean`` (NaN without such pairs),
    ``frac_above_0.99`` (all pairs; near 1 is the F19 collapse symptom) and ``n_samples``.
    """
    if emb.dim() != 2 or emb.shape[0] < 2 or labels.shape != (emb.shape[0],):
        raise ValueError(f"emb (N, D) with N >= 2 and labels (N,) expected, got {tuple(emb.shape)} and {tuple(labels.shape)}")
    z = F.normalize(emb.detach().double().cpu(), dim=1)
    lab = labels.detach().cpu()
    if z.shape[0] > max_samples:
        keep = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:max_samples]
        z, lab = z[keep], lab[keep]
    m = z.shape[0]
    upper = torch.ones(m, m, dtype=torch.bool).triu_(1)
    sims = (z @ z.t()).clamp_(-1.0, 1.0)
    same = lab[:, None] == lab[None, :]
    pos, neg = sims[upper & same], sims[upper & ~same]
    out: dict[str, Tensor | float | int] = {
        "pos_counts": torch.histc(pos, bins=bins, min=-1.0, max=1.0).long(),
        "neg_counts": torch.histc(neg, bins=bins, min=-1.0, max=1.0).long(),
        "edges": torch.linspace(-1.0, 1.0, bins + 1, dtype=torch.float64),
        "n_pos_pairs": pos.numel(),
        "n_neg_pairs": neg.numel(),
        "pos_mean": float(pos.mean()) if pos.numel() else math.nan,
        "neg_mean": float(neg.mean()) if neg.numel() else math.nan,
        "frac_above_0.99": float(((pos > 0.99).sum() + (neg > 0.99).sum()) / max(1, pos.numel() + neg.numel())),
        "n_samples": m,
    }
    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.subplots()
    edges = out["edges"].numpy()
    for counts, name, color in ((out["neg_counts"], "negative", "#d73027"), (out["pos_counts"], "positive", "#1a9850")):
        density = counts.double() / max(1, int(counts.sum()))
        ax.stairs(density.numpy(), edges, fill=True, alpha=0.45, color=color, label=f"{name} ({int(counts.sum())} pairs)")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("fraction of pairs")
    ax.set_title(f"{m} samples; {out['frac_above_0.99']:.1%} of pairs > 0.99", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return out


def _pca_2d(x: Tensor) -> Tensor:
    """Exact 2-D PCA (SVD of the centred data); signs fixed so each component's largest |loading| is > 0."""
    xc = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    v = vh[:2]
    sign = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    return xc @ (v * sign).t()


def embedding_map(emb: Tensor, labels: Tensor, path: str | Path, method: str = "pca") -> Tensor:
    """2-D map of ``emb`` (N, D) coloured by ``labels`` (N,), saved as a PNG; returns the (N, 2) coordinates.

    ``method="pca"``: exact PCA of the raw embeddings (float64 SVD, sklearn's sign convention up to the
    flip rule in :func:`_pca_2d`). ``method="umap"``: umap-learn (cosine metric, seed 0) when installed,
    otherwise a printed note and PCA.
    """
    if emb.dim() != 2 or labels.shape != (emb.shape[0],) or emb.shape[0] < 2:
        raise ValueError(f"emb (N, D) with N >= 2 and labels (N,) expected, got {tuple(emb.shape)} and {tuple(labels.shape)}")
    if method not in ("pca", "umap"):
        raise ValueError(f"method must be 'pca' or 'umap', got {method!r}")
    x = emb.detach().double().cpu()
    used = method
    if method == "umap":
        try:
            import umap  # optional dependency
        except ImportError:
            print("embedding_map: umap-learn is not installed; using PCA instead")
            used = "pca"
        else:
            reducer = umap.UMAP(n_components=2, metric="cosine", random_state=0)
            coords = torch.from_numpy(reducer.fit_transform(x.numpy())).double()
    if used == "pca":
        coords = _pca_2d(x)
    lab = labels.detach().cpu()
    uniq = torch.unique(lab).tolist()
    n = len(uniq)
    fig = Figure(figsize=(5 + (1.6 if n > 12 else 0), 4.5), dpi=100)
    ax = fig.subplots()
    # every point drawn once, in a fixed random order, half transparent: no class hides under another
    order = torch.randperm(len(lab), generator=torch.Generator().manual_seed(0))
    labelled = [u for u in uniq if u >= 0]
    colour_of = {u: _cmap(labelled.index(u), len(labelled)) if u >= 0 else (0.55, 0.55, 0.55, 1.0) for u in uniq}
    colours = [colour_of[int(lab[j])] for j in order.tolist()]
    ax.scatter(coords[order, 0].numpy(), coords[order, 1].numpy(), s=7, c=colours, alpha=0.55, linewidths=0)
    for u in uniq:  # legend entries (empty scatters): every label, the unlabelled ones (label < 0) in grey
        ax.scatter([], [], s=14, color=colour_of[u], label="unlabelled" if u < 0 else str(u))
    ax.legend(fontsize=6, markerscale=1.5, title="label", title_fontsize=7, ncol=1 if n <= 24 else 2,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    repeat = f"; {n} labels, colours repeat every 20" if n > 20 else ""
    ax.set_title(f"{used.upper()} of {x.shape[0]} embeddings (alpha 0.55{repeat})", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return coords


def _cmap(i: int, n: int) -> tuple:
    from matplotlib import colormaps

    return colormaps["tab20" if n > 10 else "tab10"](i % 20)


def _f(x: object) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.4f}"


def compare_checkpoints(
    name_a: str,
    out_a: dict,
    name_b: str,
    out_b: dict,
    stats_a: dict,
    stats_b: dict,
    query_names: Sequence[str],
    top: int = 10,
) -> tuple[dict, str]:
    """Checkpoint A vs B on the same queries (F19).

    Args:
        out_a, out_b: :func:`retrieval_metrics` outputs on the same queries in the same order;
        stats_a, stats_b: :func:`embedding_stats` outputs; query_names: one name per query; top: rows of
        the improved / degraded tables.

    Returns:
        ``(result, markdown)``. ``result``: ``"metrics"`` ``{key: {"a", "b", "delta"}}`` for mAP, mAP@R,
        R-precision and every P@k / R@k / hit_rate@k in both; ``"spread"`` ``{key: {"a", "b"}}`` (std,
        std_expected, std_ratio, cos p05/p50/p95); ``"improved"`` / ``"degraded"``: up to ``top`` tuples
        ``(query_name, ap_a, ap_b)`` by ``|ap_b - ap_a|`` descending (from :func:`compare_per_query_ap`);
        ``"n_improved"``, ``"n_degraded"``, ``"n_unchanged"``, ``"n_compared"``, ``"mean_delta"``.
    """
    ap_a, ap_b = out_a["per_query_ap"], out_b["per_query_ap"]
    if ap_a.shape != ap_b.shape or ap_a.numel() != len(query_names):
        raise ValueError(
            f"out_a, out_b and query_names must cover the same queries: {ap_a.numel()}, {ap_b.numel()} and "
            f"{len(query_names)} queries"
        )
    keys = [k for k in out_a if k.startswith(_HEADLINE) and k in out_b and k != "per_query_ap"]
    metrics = {k: {"a": float(out_a[k]), "b": float(out_b[k]), "delta": float(out_b[k]) - float(out_a[k])} for k in keys}
    spread = {k: {"a": float(stats_a[k]), "b": float(stats_b[k])} for k in _SPREAD if k in stats_a and k in stats_b}
    cmp = compare_per_query_ap(ap_a, ap_b)
    name = [str(q) for q in query_names]
    improved = [(name[i], a, b) for i, a, b in cmp["improved"][:top]]
    degraded = [(name[i], a, b) for i, a, b in cmp["degraded"][:top]]
    result = {
        "metrics": metrics,
        "spread": spread,
        "improved": improved,
        "degraded": degraded,
        "n_improved": len(cmp["improved"]),
        "n_degraded": len(cmp["degraded"]),
        "n_unchanged": cmp["n_unchanged"],
        "n_compared": cmp["n_compared"],
        "mean_delta": cmp["mean_delta"],
    }
    md = [f"## {name_a} vs {name_b}", "", f"| metric | {name_a} | {name_b} | delta |", "|---|---:|---:|---:|"]
    md += [f"| {k} | {_f(v['a'])} | {_f(v['b'])} | {v['delta']:+.4f} |" for k, v in metrics.items()]
    md += ["", "Embedding spread (F19: std near 0 and cos p05 near 1 mean collapse; healthy std near std_expected)", ""]
    md += [f"| statistic | {name_a} | {name_b} |", "|---|---:|---:|"]
    md += [f"| {k} | {_f(v['a'])} | {_f(v['b'])} |" for k, v in spread.items()]
    md += [
        "",
        f"Per-query AP over {cmp['n_compared']} queries: {len(cmp['improved'])} improved, {len(cmp['degraded'])} "
        f"degraded, {cmp['n_unchanged']} unchanged; mean delta {_f(cmp['mean_delta'])}.",
    ]
    for title, items in (("Most improved", improved), ("Most degraded", degraded)):
        md += ["", f"### {title} queries", "", f"| query | AP {name_a} | AP {name_b} | delta |", "|---|---:|---:|---:|"]
        md += [f"| {q} | {a:.4f} | {b:.4f} | {b - a:+.4f} |" for q, a, b in items] or ["| (none) | | | |"]
    return result, "\n".join(md) + "\n"
