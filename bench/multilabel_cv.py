"""Cached tower embeddings vs recomputing the towers: the multilabel study's k-fold x ablation CV.

Both variants train the same heads with the same losses (the seed's four: baseline MLP, AGCH full, AB-1 no hash,
AB-3 BCE only) on every fold of one iterstrat split of a ShapesWorld pool, in this process, one after the other:

* cached: ``MultilabelDataModule`` computes the pool's image and caption embeddings once (the frozen-feature
  cache, on disk) and every fold x ablation x epoch reads them;
* recompute: every epoch runs the frozen towers on the fold's images and tokenized captions again (what a
  script without the cache does).

Towers (random init; only their cost matters): ``--size tiny`` the demo stand-in's architecture (0.2 M
parameters, 32 px, patch 8); ``small`` a ViT-S-sized pair (width 384, 6 + 6 layers) at 64 px, patch 8;
``base`` SigLIP-base-sized towers (width 768, 12 + 12 layers) at 224 px, patch 16, as the seed's checkpoint. The last line prints the ratio
recompute / cached of the total CV time (the issue's target: >= 5x).

Usage: ``python bench/multilabel_cv.py [--size tiny|small|base] [--folds 5] [--epochs 5] [--n 512] [--batch 64]``
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from lit_experiments.core.folds import make_folds
from lit_experiments.studies.multilabel.datamodule import MultilabelDataModule
from lit_experiments.studies.multilabel.heads import AGCHHead, MLPHead
from lit_experiments.studies.multilabel.losses import CombinedLoss
from lit_experiments.studies.multilabel.sources import ShapesCaptionSource
from lit_experiments.studies.multilabel.standin import default_config
from lit_experiments.studies.multilabel.towers import SiglipTowers, tiny_config

ABLATIONS = {
    "mlp": (lambda: MLPHead(hidden=[512]), {}),
    "agch": (lambda: AGCHHead(hash_bits=64), {"cosine_weight": 0.5, "hash_weight": 0.1}),
    "agch_no_hash": (lambda: AGCHHead(hash_bits=None), {"cosine_weight": 0.5}),
    "agch_bce_only": (lambda: AGCHHead(hash_bits=64), {}),
}


def train_heads(batches_of_epoch, n_classes: int, dims: tuple[int, int], epochs: int) -> None:
    """Every ablation for ``epochs`` epochs over ``batches_of_epoch()`` (an iterable of (image, text, y))."""
    for make_head, weights in ABLATIONS.values():
        torch.manual_seed(0)
        head, loss = make_head(), CombinedLoss(**weights)
        head.build(dims[0], dims[1], n_classes)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
        head.train()
        for _ in range(epochs):
            for img, txt, y in batches_of_epoch():
                out = loss(head(img, txt), y)["loss"]
                opt.zero_grad()
                out.backward()
                opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n", type=int, default=512, help="pool images")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", choices=("tiny", "small", "base"), default="small")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.size == "base":
        config = tiny_config(image_size=224, patch_size=16, hidden=768, vision_layers=12, text_layers=12, heads=12,
                             text_len=64)
        config["vision_config"]["intermediate_size"] = config["text_config"]["intermediate_size"] = 3072
    elif args.size == "small":
        config = tiny_config(image_size=64, patch_size=8, hidden=384, vision_layers=6, text_layers=6, heads=6,
                             text_len=16)
    else:
        config = default_config()
    towers = SiglipTowers(config=config)
    with tempfile.TemporaryDirectory() as tmp:
        shapes = {"image_size": towers.image_size}
        dm = MultilabelDataModule(frozen=towers, source=ShapesCaptionSource(n_pool=args.n, n_test=8, world=shapes),
                                  cache_dir=tmp, batch_size=args.batch)
        pool = dm._base("pool")
        folds = make_folds(len(pool), pool.targets.numpy(), args.folds, seed=0)
        n_classes = pool.targets.shape[1]
        print(f"towers: {sum(p.numel() for p in towers.parameters()) / 1e6:.2f} M parameters, "
              f"{shapes['image_size']} px; pool {args.n}; {args.folds} folds x {len(ABLATIONS)} ablations x "
              f"{args.epochs} epochs; {args.threads} thread(s)", flush=True)

        # -------- cached: embeddings computed once (timed), then read by every fold x ablation x epoch
        t0 = time.perf_counter()
        emb = dm.embedded("pool")
        build = time.perf_counter() - t0
        all_img = torch.stack([emb[i]["image_emb"] for i in range(len(emb))])
        all_txt = torch.stack([emb[i]["text_emb"] for i in range(len(emb))])
        dims = (all_img.shape[1], all_txt.shape[1])
        t1 = time.perf_counter()
        for fold in folds:
            train = torch.tensor(fold["train"])

            def cached_epoch(train=train):
                order = train[torch.randperm(len(train))]
                for i in range(0, len(order), args.batch):
                    idx = order[i:i + args.batch].tolist()
                    items = [emb[j] for j in idx]  # the datamodule's per-item path
                    yield (torch.stack([it["image_emb"] for it in items]), torch.stack([it["text_emb"] for it in items]),
                           torch.stack([it["targets"] for it in items]))

            train_heads(cached_epoch, n_classes, dims, args.epochs)
        cached = build + time.perf_counter() - t1
        print(f"cached:    {cached:8.1f} s (embedding pass {build:.1f} s once, then reads)", flush=True)

        # -------- recompute: the towers run on the fold's images and captions every epoch
        images = torch.stack([pool[i]["image"] for i in range(len(pool))])
        tokens = towers.tokenize(pool.captions)
        t2 = time.perf_counter()
        for fold in folds:
            train = torch.tensor(fold["train"])

            def recompute_epoch(train=train):
                order = train[torch.randperm(len(train))]
                for i in range(0, len(order), args.batch):
                    idx = order[i:i + args.batch]
                    with torch.no_grad():
                        img = towers.encode_image(**towers.image_inputs(images[idx])).float()
                        txt = towers.encode_text(**{k: v[idx] for k, v in tokens.items()}).float()
                    yield img, txt, pool.targets[idx]

            train_heads(recompute_epoch, n_classes, dims, args.epochs)
        recompute = time.perf_counter() - t2
        print(f"recompute: {recompute:8.1f} s", flush=True)
    print(f"ratio recompute / cached = {recompute / cached:.1f}x")


if __name__ == "__main__":
    main()
