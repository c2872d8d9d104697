"""`lit-exp retrieval-report`: a retrieval evaluation that explains itself, for one checkpoint or two.

    lit-exp retrieval-report -c configs/retrieval/demo.yaml --ckpt runs/retrieval/demo/stages/02_fastap/final.ckpt
    lit-exp retrieval-report -c RUN/config.yaml --ckpt RUN/stages/01_simsiam/final.ckpt \\
        --ckpt_b RUN/stages/02_fastap/final.ckpt --query 0 --query 17 --out runs/retrieval/compare

Embeds every held-out frame (and the external query images of a frames folder), then writes to ``--out``:
``metrics.json`` (mAP, mAP@R, R-precision, precision / recall / hit_rate @k of the final embedding; mAP of
SimSiam's embedding and of the backbone's features; the expected AP of a random ranking; embedding spread),
``per_query_ap.csv``, ``ranking.md`` (rank, frame, score, label of the internal ``--query`` frames and of every
external query) with one thumbnail grid PNG per query, ``similarity_hist.png`` (positive vs negative pairs), ``embedding_map.png`` (PCA, or ``--map umap``) and,
with ``--ckpt_b``, ``compare.md`` / ``compare.json`` (per-query AP of A vs B, most improved / degraded queries,
spread of both). The metric definitions are those of ``lit_experiments.metrics.retrieval``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


#: the embeddings besides the final one, by results-key suffix (``map_<name>``)
OTHERS = ("backbone", "simsiam", "init", "probe")


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

    from .evaluation import embedding_map, ranking_grid, ranking_markdown, ranking_rows, similarity_histogram

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
    groups = _groups(dm, ids)
    res = retrieval_numbers(f, z, labels, ks, groups, others)
    res["_groups"] = groups
    if module._is_rank_zero() and dm is not None:
        frames = dm.frames("test")
        first = frames[int(ids[0])]
        queries = [(first["frame"], first["image"], int(labels[0]), z[0])]
        queries += _external(module, dm)
        write_outputs(module.run_dir / "retrieval", res, z, labels, ids, frames, queries)
    res.pop("_per_query", None)
    return res


def _groups(dm: Any, ids: Any) -> Any:
    """The video of every test frame (``clips`` of the split), or None when the split does not know them."""
    clips = getattr(dm.frames("test"), "clips", None) if dm is not None else None
    return None if clips is None else clips[ids.long().cpu()]


def _external(module: Any, dm: Any) -> list[tuple[str, Any, int, Any]]:
    queries = getattr(dm, "queries", None)
    if queries is None:
        return []
    out = []
    for i in range(len(queries)):
        item = queries[i]
        emb = module.embed(item["image"].unsqueeze(0))["embedding"][0].cpu()
        out.append((f"external:{item['frame']}", item["image"], int(item["label"]), emb))
    return out


# ---------------------------------------------------------------------------------------------------- CLI
def _build(config: str) -> tuple[Any, Any]:
    from jsonargparse import ArgumentParser

    from lit_experiments.core.configs import load_composed
    from lit_experiments.core.errors import ConfigError

    from .datamodule import RetrievalDataModule
    from .module import RetrievalModule

    raw = load_composed(config)
    if "model" not in raw or "data" not in raw:
        raise ConfigError(f"{config}: a retrieval config needs model: and data: sections")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=RetrievalModule)
    parser.add_argument("--data", type=RetrievalDataModule)
    cfg = parser.parse_object({"model": raw["model"], "data": raw["data"]})
    init = parser.instantiate_classes(cfg)
    return init.model, init.data


def _embed_split(model: Any, dm: Any) -> tuple[Any, Any, Any, Any, Any]:
    """Backbone features, embeddings, SimSiam's embeddings, labels and indices of the test frames (eval mode)."""
    import torch

    frames = dm.frames("test")
    fs, zs, ss, labels, ids = [], [], [], [], []
    bs = dm.eval_batch_size or 256
    for lo in range(0, len(frames), bs):
        items = [frames[i] for i in range(lo, min(len(frames), lo + bs))]
        out = model.embed(torch.stack([it["image"] for it in items]))
        fs.append(out["features"].cpu())
        zs.append(out["embedding"].cpu())
        ss.append(out["simsiam"].cpu())
        labels += [int(it["label"]) for it in items]
        ids += [int(it["index"]) for it in items]
    return torch.cat(fs), torch.cat(zs), torch.cat(ss), torch.tensor(labels), torch.tensor(ids)


def _load(config: str, ckpt: str) -> tuple[Any, Any]:
    from lit_experiments.core.checkpoints import NO_CHECKPOINT, load_weights_for_eval
    from lit_experiments.core.specs import StageSpec

    model, dm = _build(config)
    dm.inputs = "images"
    dm.setup("test")
    if ckpt != NO_CHECKPOINT:
        load_weights_for_eval(model, dm, ckpt, prepare=lambda stage: model.set_stage(
            StageSpec(name=stage or "fit", max_epochs=1), in_curriculum=False))
    return model.eval(), dm


def report_one(config: str, ckpt: str, out: Path, query_idx: list[int], top: int, map_method: str,
               ks: list[int]) -> dict[str, Any]:
    """Evaluate one checkpoint into ``out``; returns its numbers (with the per-query internals)."""

    model, dm = _load(config, ckpt)
    f, z, s, labels, ids = _embed_split(model, dm)
    res = retrieval_numbers(f, z, labels, ks, _groups(dm, ids), {"simsiam": s})
    frames = dm.frames("test")
    queries = []
    for q in query_idx:
        if not 0 <= q < len(ids):
            from lit_experiments.core.errors import ConfigError

            raise ConfigError(f"--query {q}: the test split has {len(ids)} frames (0..{len(ids) - 1})")
        item = frames[int(ids[q])]
        queries.append((item["frame"], item["image"], int(labels[q]), z[q]))
    queries += _external(model, dm)  # embed() runs without gradients
    res["_names"] = write_outputs(out, res, z, labels, ids, frames, queries, k=top, map_method=map_method,
                                  extra={"checkpoint": ckpt})
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lit-exp retrieval-report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="the run's config (e.g. RUN/config.yaml)")
    parser.add_argument("--ckpt", required=True, help="checkpoint A (final.ckpt / last.ckpt, or 'init')")
    parser.add_argument("--ckpt_b", default=None, help="checkpoint B, compared with A query by query")
    parser.add_argument("--out", default=None, help="output folder (default: <run of A>/retrieval-report)")
    parser.add_argument("--query", type=int, action="append", default=None,
                        help="index of an internal query frame in the test split (repeatable; default 0)")
    parser.add_argument("--top", type=int, default=10, help="results per ranking table (default 10)")
    parser.add_argument("--map", default="pca", choices=("pca", "umap"), help="2-D map method")
    parser.add_argument("--ks", default="1,5,10,20,50", help="cut-offs of the @k metrics")
    args = parser.parse_args(argv)
    from lit_experiments.core.checkpoints import find_run_dir

    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    run = find_run_dir(Path(args.ckpt)) if args.ckpt != "init" else None
    out = Path(args.out) if args.out else (run or Path("runs/retrieval")) / "retrieval-report"
    queries = args.query or [0]
    a = report_one(args.config, args.ckpt, out / "a" if args.ckpt_b else out, queries, args.top, args.map, ks)
    print(f"A {args.ckpt}: mAP {a['map']:.4f} (SimSiam's embedding {a.get('map_simsiam', float('nan')):.4f}, backbone "
          f"{a['map_backbone']:.4f}, random ranking {a['map_random']:.4f}), "
          f"mAP@R {a['map@r']:.4f}, z std {a['z_std']:.4f} (healthy {a['z_std_healthy']:.4f})")
    if args.ckpt_b:
        from .evaluation import compare_checkpoints

        b = report_one(args.config, args.ckpt_b, out / "b", queries, args.top, args.map, ks)
        result, md = compare_checkpoints("A", a["_per_query"][2], "B", b["_per_query"][2], a["_per_query"][3],
                                         b["_per_query"][3], a["_names"], top=args.top)
        md = f"A = `{args.ckpt}`\n\nB = `{args.ckpt_b}`\n\n" + md
        (out / "compare.md").write_text(md)
        (out / "compare.json").write_text(json.dumps(result, indent=1, default=str))
        print(f"B {args.ckpt_b}: mAP {b['map']:.4f}; {result['n_improved']} queries improved, "
              f"{result['n_degraded']} degraded (mean AP change {result['mean_delta']:+.4f})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
