"""Training-step overhead of the workbench: the toy study through LitTrainer (the `lit-exp` code path, with
LazyBuild, StageFreeze, TrainingHealth and the CSV logger) versus a bare PyTorch loop on the same model, data
and batch size, in one process. Prints seconds per step for both and their ratio (goal <= 1.10)."""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import torch

from lit_experiments.core.specs import OptimSpec
from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.toy.datamodule import ToyDataModule
from lit_experiments.studies.toy.module import ToyModule


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.elapsed = time.perf_counter() - self.start
        self.steps = trainer.global_step - self.warmup


def lit_seconds_per_step(args) -> float:
    L.seed_everything(0, verbose=False)
    dm = ToyDataModule(n_train=args.batch * (args.steps + args.warmup), dim=args.dim, num_classes=10,
                       batch_size=args.batch)
    model = ToyModule(num_classes=10, in_dim=args.dim, hidden=args.hidden, optimizer=OptimSpec(lr=1e-3))
    timer = StepTimer(args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = LitTrainer(run_dir=tmp, accelerator="cpu", devices=1, max_steps=args.steps + args.warmup,
                             max_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, log_every_n_steps=50, callbacks=[timer], enable_checkpointing=False)
        trainer.fit(model, datamodule=dm)
    return timer.elapsed / timer.steps


def bare_seconds_per_step(args) -> float:
    L.seed_everything(0, verbose=False)
    dm = ToyDataModule(n_train=args.batch * (args.steps + args.warmup), dim=args.dim, num_classes=10,
                       batch_size=args.batch)
    dm.setup("fit")
    model = ToyModule(num_classes=10, in_dim=args.dim, hidden=args.hidden)
    model(next(iter(dm.train_dataloader())))  # build the lazy layer
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)  # as OptimSpec(lr=1e-3)
    model.train()
    start, steps = None, 0
    for step, batch in enumerate(dm.train_dataloader()):
        if step == args.warmup:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(batch), batch["y"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += step >= args.warmup
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    # a small step (overhead dominates) and a realistic one; widths chosen so the toy's two-layer encoder does
    # about the multiply-adds of the former one-layer 256->1024 / 512->2048 encoder (the ratios stay comparable)
    sizes = {"small": (256, 256, 384), "realistic": (512, 512, 768)}
    ratio = 0.0
    for label, (batch, dim, hidden) in sizes.items():
        cfg = argparse.Namespace(**vars(args), batch=batch, dim=dim, hidden=hidden)
        lit, bare = [], []
        for _ in range(args.repeats):  # interleaved, best of N: robust to a busy machine
            bare.append(bare_seconds_per_step(cfg))
            lit.append(lit_seconds_per_step(cfg))
        b, li = min(bare), min(lit)
        ratio = li / b
        print(f"[{label}] batch {batch}, MLP {dim}->{hidden}->{hidden}->10, {args.steps} timed steps, best of {args.repeats}: "
              f"bare {b * 1e3:.2f} ms/step, lit-exp {li * 1e3:.2f} ms/step, "
              f"overhead {(li - b) * 1e3:.2f} ms/step, ratio {ratio:.3f}")
    print(f"overhead ratio lit/bare at the realistic size = {ratio:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
