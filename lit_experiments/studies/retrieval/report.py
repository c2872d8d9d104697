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
import json
import sys
from pathlib import Path
from typing import Any

from .evaluation import external_queries, retrieval_numbers, video_groups, write_outputs


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
    dm.features = False
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
    res = retrieval_numbers(f, z, labels, ks, video_groups(dm, ids), {"simsiam": s})
    frames = dm.frames("test")
    queries = []
    for q in query_idx:
        if not 0 <= q < len(ids):
            from lit_experiments.core.errors import ConfigError

            raise ConfigError(f"--query {q}: the test split has {len(ids)} frames (0..{len(ids) - 1})")
        item = frames[int(ids[q])]
        queries.append((item["frame"], item["image"], int(labels[q]), z[q]))
    queries += external_queries(model, dm)  # embed() runs without gradients
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
        from .figures import compare_checkpoints

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
