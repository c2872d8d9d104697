"""The test-time evaluation of the retrieval study (F19, F21, F49): numbers, per-query AP, files.

* :func:`retrieval_numbers`: self-retrieval numbers of the final embedding and, by the same metric code on the
  same queries, of the backbone's features, SimSiam's embedding, the random-init backbone and a linear probe; the
  floor of every mAP is :func:`lit_experiments.metrics.expected_random_ap`, the expected AP of a uniformly random
  ranking (closed form); the ``*_xclip`` numbers leave the query's own video out of its ranking.
* :func:`evaluation_outputs`: what :class:`~.module.RetrievalModule`'s test hook calls (files on rank 0 in
  ``<run_dir>/retrieval/``); :func:`write_outputs`: ``metrics.json``, ``per_query_ap.csv``, ``ranking.md`` with a
  thumbnail grid per query, the similarity histogram and the 2-D map (drawn by :mod:`.figures`), also for
  ``lit-exp retrieval-report`` (:mod:`.report`).
* :func:`linear_probe`: a logistic-regression probe on frozen features, a reference row.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def retrieval_numbers(f: torch.Tensor, z: torch.Tensor, labels: torch.Tensor, ks: list[int],
                      groups: torch.Tensor | None = None, others: dict[str, torch.Tensor | None] | None = None
                      ) -> dict[str, Any]:
    """Self-retrieval numbers of the final embedding ``z`` (``map``, ``map@r``, the @k metrics, spread) and, by the
    same metric code on the same queries, of the backbone features ``f`` (``map_backbone``) and of every embedding
    in ``others`` (``map_<name>``: ``simsiam`` = SimSiam's projector output, ``init`` = the random-init backbone,
    ``probe`` = a linear probe's class probabilities; None values are left out). ``map_random`` is the expected AP
    of a random ranking (closed form, the floor); ``map_chance`` the mean positive rate.

    With ``groups`` (the video of each frame, more than one), the ``*_xclip`` numbers leave every frame of the
    query's own video out of its ranking: neighbouring frames are near-duplicates and would make the numbers.
    ``_per_item`` holds the per-query AP of every embedding (and the random ranking's expectation), by key."""
    import torch
    import torch.nn.functional as F

    from lit_experiments.metrics import embedding_stats, expected_random_ap, retrieval_metrics
    from lit_experiments.metrics.embedding import effective_rank

    n = z.shape[0]
    ks_ok = [k for k in ks if k <= n - 1] or [1]
    embs = {"": z, "backbone": f, **{k: v for k, v in (others or {}).items() if v is not None}}

    def run(x: torch.Tensor, **kw: Any) -> dict[str, Any]:
        xn = F.normalize(x.float(), dim=1)
        return retrieval_metrics(xn, xn, labels, labels, exclude_self=True, **kw)

    outs = {name: run(x, ks=ks_ok) for name, x in embs.items()}
    out_z, out_f = outs[""], outs["backbone"]
    same = labels[:, None] == labels[None, :]
    pos = same.sum(1) - 1
    has = pos > 0
    rand = expected_random_ap(pos, torch.full_like(pos, n - 1))
    stats = embedding_stats(z.float())
    res: dict[str, Any] = {k: float(v) for k, v in out_z.items() if k not in ("per_query_ap", "n_queries",
                                                                              "n_skipped_queries")}
    for name, out in outs.items():
        if name:
            res[f"map_{name}"], res[f"map@r_{name}"] = float(out["map"]), float(out["map@r"])
    res.update({
        "map_random": float(rand[has].mean()) if bool(has.any()) else float("nan"),
        "map_chance": float((pos[has].double() / (n - 1)).mean()) if bool(has.any()) else float("nan"),
        "n_queries": int(out_z["n_queries"]), "n_skipped_queries": int(out_z["n_skipped_queries"]),
        "z_std": float(stats["std"]), "z_std_healthy": float(stats["std_expected"]),
        "z_std_ratio": float(stats["std_ratio"]), "effective_rank": float(effective_rank(z.float())),
        "cos_p50": float(stats["cos_p50"]), "cos_p95": float(stats["cos_p95"]),
    })
    per_item = {f"map{'_' + k if k else ''}": o["per_query_ap"] for k, o in outs.items()}
    per_item["map_random"] = rand
    dropped = [k for k in ks if k > n - 1]
    if dropped:
        res["ks_dropped"] = len(dropped)
    if groups is not None and len(torch.unique(groups)) > 1:  # a query's own video left out (near-duplicates)
        own = (groups[:, None] == groups[None, :]).sum(1)
        ks_x = [k for k in ks_ok if k <= n - int(own.max())] or [1]
        kw = {"ks": ks_x, "query_groups": groups, "gallery_groups": groups}
        xouts = {name: run(x, **kw) for name, x in embs.items()}
        other = groups[:, None] != groups[None, :]
        pos_x = (same & other).sum(1)
        has_x = pos_x > 0
        rand_x = expected_random_ap(pos_x, other.sum(1))
        xz = xouts[""]
        res.update({
            "map_xclip": float(xz["map"]), "precision@1_xclip": float(xz["precision@1"]),
            "hit_rate@10_xclip": float(xz.get("hit_rate@10", float("nan"))),
            "map_random_xclip": float(rand_x[has_x].mean()) if bool(has_x.any()) else float("nan"),
            "map_chance_xclip": float((pos_x[has_x].double() / other.sum(1)[has_x]).mean()) if bool(has_x.any())
            else float("nan"),
        })
        for name, out in xouts.items():
            if name:
                res[f"map_{name}_xclip"] = float(out["map"])
            per_item[f"map{'_' + name if name else ''}_xclip"] = out["per_query_ap"]
        per_item["map_random_xclip"] = rand_x
    res["_per_query"] = (out_f["per_query_ap"], out_z["per_query_ap"], out_z, stats)
    res["_per_item"] = per_item
    return res


def write_outputs(out: Path, res: dict[str, Any], z: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor,
                  frames: Any, queries: list[tuple[str, torch.Tensor, int, torch.Tensor]], k: int = 10,
                  map_method: str = "pca", extra: dict[str, Any] | None = None) -> list[str]:
    """Figures and tables of one evaluation into ``out`` (see the module docstring).

    ``frames``: the gallery dataset (``image`` by index, ``frame_name(i)``); ``queries``: ``(name, image, label,
    embedding)`` of each query to tabulate (internal frames or external images); ``extra``: more entries for
    metrics.json. Returns the gallery's frame names in ``ids`` order."""
    import torch
    import torch.nn.functional as F

    from .figures import embedding_map, ranking_grid, ranking_markdown, ranking_rows, similarity_histogram

    out.mkdir(parents=True, exist_ok=True)
    ap_f, ap_z = res["_per_query"][0], res["_per_query"][1]
    names = [frames.frame_name(int(i)) for i in ids.tolist()]
    with (out / "per_query_ap.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "frame", "label", "ap_backbone", "ap_embedding"])
        for j in range(len(names)):
            w.writerow([int(ids[j]), names[j], int(labels[j]), f"{float(ap_f[j]):.6f}", f"{float(ap_z[j]):.6f}"])
    hist = similarity_histogram(z.float(), labels, out / "similarity_hist.png")
    res["frac_pairs_above_0.99"] = float(hist["frac_above_0.99"])
    embedding_map(z.float(), labels, out / "embedding_map.png", method=map_method)
    zn = F.normalize(z.float(), dim=1)
    md = ["# Rankings", "", "Score: cosine similarity of the final embeddings. Ranking: score descending, then "
          "gallery index ascending (the order of every @k metric).", ""]
    for name, image, label, emb in queries:
        scores = zn @ F.normalize(emb.float().view(1, -1), dim=1).t()
        exclude = names.index(name) if name in names else None
        kk = min(k, len(names) - (exclude is not None))
        rows = ranking_rows(scores.view(-1), labels, names, label, kk, exclude_index=exclude)
        md += [ranking_markdown(f"query {name} (label {label})", rows), ""]
        thumbs = torch.stack([frames[int(ids[r["index"]])]["image"] for r in rows])
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        ranking_grid(image, thumbs, rows, out / f"ranking_{safe}.png")
    (out / "ranking.md").write_text("\n".join(md))
    clean = {key: v for key, v in res.items() if not key.startswith("_")}
    (out / "metrics.json").write_text(json.dumps({**clean, **(extra or {})}, indent=1))
    return names


def evaluation_outputs(module: Any, f_pack: tuple, z_pack: tuple, ks: list[int],
                       others: dict[str, Any] | None = None) -> dict[str, Any]:
    """The test-time numbers of :class:`~.module.RetrievalModule` (``others``: see :func:`retrieval_numbers`);
    files in ``<run_dir>/retrieval/`` on rank 0. ``_per_item`` / ``_groups`` stay in the result for the caller."""
    f, labels, ids = f_pack
    z = z_pack[0]
    dm = getattr(module.trainer, "datamodule", None)
    groups = video_groups(dm, ids)
    res = retrieval_numbers(f, z, labels, ks, groups, others)
    res["_groups"] = groups
    if module._is_rank_zero() and dm is not None:
        frames = dm.frames("test")
        first = frames[int(ids[0])]
        queries = [(first["frame"], first["image"], int(labels[0]), z[0])]
        queries += external_queries(module, dm)
        write_outputs(module.run_dir / "retrieval", res, z, labels, ids, frames, queries)
    res.pop("_per_query", None)
    return res


def video_groups(dm: Any, ids: Any) -> Any:
    """The video of every test frame (``clips`` of the split), or None when the split does not know them."""
    clips = getattr(dm.frames("test"), "clips", None) if dm is not None else None
    return None if clips is None else clips[ids.long().cpu()]


def external_queries(module: Any, dm: Any) -> list[tuple[str, Any, int, Any]]:
    queries = getattr(dm, "queries", None)
    if queries is None:
        return []
    out = []
    for i in range(len(queries)):
        item = queries[i]
        emb = module.embed(item["image"].unsqueeze(0))["embedding"][0].cpu()
        out.append((f"external:{item['frame']}", item["image"], int(item["label"]), emb))
    return out


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, c: float = 1.0) -> Tensor | None:
    """Class probabilities ``(N_test, C)`` of a logistic-regression probe (sklearn, L-BFGS, L2 ``c``) fitted on
    standardised ``train_x`` / ``train_y``; None when the training labels hold a single class."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    y = train_y.detach().cpu().long().numpy()
    if len(set(y.tolist())) < 2:
        return None
    scaler = StandardScaler().fit(train_x.detach().cpu().double().numpy())
    probe = LogisticRegression(C=c, max_iter=2000)
    probe.fit(scaler.transform(train_x.detach().cpu().double().numpy()), y)
    return torch.from_numpy(probe.predict_proba(scaler.transform(test_x.detach().cpu().double().numpy())))
