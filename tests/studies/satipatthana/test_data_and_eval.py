"""Datamodules (circles / digits / ShapesWorld, void sets) and the evaluation helpers."""

from __future__ import annotations

import pytest
import torch

from lit_experiments.studies.satipatthana.datamodule import (
    CirclesDataModule,
    DigitsDataModule,
    ShapesDataModule,
    min_distance_to,
)
from lit_experiments.studies.satipatthana.evaluation import CNNBaseline, MLPBaseline, SatipatthanaTestMetrics


def test_circles_splits_and_void_sets_away_from_the_data():
    dm = CirclesDataModule(n_samples=400, void_min_distance=0.1, batch_size=16, train_void_factor=2)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 280, "val": 40, "test": 80}
    train = dm.splits["train"]
    assert len(train.x_void) == 2 * len(train.x)
    for split in dm.splits.values():
        assert (min_distance_to(split.x_void, train.x) > 0.1).all()
        assert set(split.void_kind.unique().tolist()) == {0, 1, 2}
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "y", "x_void", "void_kind", "index", "x_partner"} and batch["x"].shape == (16, 2)
    item = dm.splits["test"][3]
    assert int(item["index"]) == 3 and torch.equal(item["x_partner"], dm.splits["test"].x[(3 + 40) % 80])
    test = dm.splits["test"]
    assert torch.bincount(test.y).tolist() == [40, 40]  # stratified
    only = CirclesDataModule(n_samples=400, batch_size=16, train_void_kinds=["filtered"])
    only.setup()
    assert set(only.splits["train"].void_kind.tolist()) == {2} and only.splits["test"].void_kind.unique().numel() == 3
    again = CirclesDataModule(n_samples=400, batch_size=16, train_void_factor=2)
    again.setup()
    assert torch.equal(again.splits["test"].x_void, test.x_void)  # seeded


@pytest.mark.parametrize("kwargs", [{"void_kinds": ["gaussian", "nope"]}, {"test_fraction": 0.0},
                                    {"val_fraction": 0.6, "test_fraction": 0.5}, {"factor": 1.5},
                                    {"train_void_factor": 0}, {"batch_size": 0}, {"train_void_kinds": ["x"]}])
def test_circles_bad_config_values(kwargs):
    with pytest.raises(ValueError):
        CirclesDataModule(**kwargs)


def test_digits_images_and_image_voids():
    dm = DigitsDataModule(image_size=16)
    dm.setup()
    train = dm.splits["train"]
    assert dm.input_shape == (1, 16, 16) and dm.num_classes == 10 and dm.is_image
    assert train.x.min() >= 0 and train.x.max() <= 1
    kinds = dict(enumerate(dm.void_kinds))
    scrambled = train.x_void[train.void_kind == [k for k, v in kinds.items() if v == "scrambled"][0]]
    # a scrambled void image keeps a real digit's intensities but none of its layout
    assert scrambled.shape[1:] == (1, 16, 16) and scrambled.max() > 0.5
    with pytest.raises(ValueError):
        DigitsDataModule(void_kinds=["filtered"])


def test_shapes_datamodule_classifies_the_object_category():
    dm = ShapesDataModule(n_samples=60, image_size=16, batch_size=8)
    dm.setup()
    assert dm.input_shape == (3, 16, 16)
    y = torch.cat([dm.splits[k].y for k in dm.splits])
    assert y.min() >= 0 and y.max() < 6 and y.unique().numel() > 1


def test_test_metrics_match_sklearn_and_numpy():
    """Accuracy, trust means, AUROC (sklearn.roc_auc_score) and PSNR (numpy) from SatipatthanaTestMetrics."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    gen = torch.Generator().manual_seed(0)
    n, kinds = 50, ["a", "b"]
    m = SatipatthanaTestMetrics(3, kinds, image=True, baseline=True, max_steps=4)
    y = torch.randint(3, (n,), generator=gen)
    logits, base = torch.randn(n, 3, generator=gen), torch.randn(n, 3, generator=gen)
    trust = {p: torch.rand(n, generator=gen) for p in ("clean", "augmented", "drunk", "mismatch", "void")}
    trust["clean"] = (trust["clean"] + 0.3).clamp(max=1)
    void_kind = torch.randint(2, (n,), generator=gen)
    x = torch.rand(n, 1, 4, 4, generator=gen)
    recon = x + 0.1 * torch.randn(x.shape, generator=gen)
    energy = {p: torch.rand(3, n, generator=gen) for p in ("clean", "drunk", "void")}
    for chunk in torch.split(torch.arange(n), [17, 20, 13]):  # batches of different sizes
        m.update(index=chunk, y=y[chunk], logits=logits[chunk], trust={k: v[chunk] for k, v in trust.items()},
                 void_kind=void_kind[chunk], energy={k: v[:, chunk] for k, v in energy.items()},
                 baseline_logits=base[chunk], recon=recon[chunk], x=x[chunk])
    out = m.compute()
    assert out["acc"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert out["baseline_acc"] == pytest.approx(float((base.argmax(1) == y).float().mean()))
    for p, v in trust.items():
        assert out[f"trust_{p}"] == pytest.approx(float(v.mean()), abs=1e-6)

    def ref_auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
        labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        return roc_auc_score(labels, np.r_[pos.numpy(), neg.numpy()])

    assert out["trust_auroc"] == pytest.approx(ref_auroc(trust["clean"], trust["void"]), abs=1e-6)
    assert out["trust_auroc_drunk"] == pytest.approx(ref_auroc(trust["clean"], trust["drunk"]), abs=1e-6)
    for i, k in enumerate(kinds):
        sel = trust["void"][void_kind == i]
        assert out[f"trust_auroc_{k}"] == pytest.approx(ref_auroc(trust["clean"], sel), abs=1e-6)
        assert out[f"trust_void_{k}"] == pytest.approx(float(sel.mean()), abs=1e-6)
    xn, rn = x.numpy().reshape(n, -1), recon.clamp(0, 1).numpy().reshape(n, -1)
    psnr_np = np.mean(10 * np.log10(1.0 / ((rn - xn) ** 2).mean(axis=1)))
    assert out["psnr"] == pytest.approx(psnr_np, rel=1e-5)
    samples = m.gathered()
    assert torch.equal(samples["trust_void"], trust["void"]) and samples["energy_drunk"].shape == (n, 4)
    assert torch.equal(samples["energy_drunk"][:, :3], energy["drunk"].T)


def test_baseline_parts_learn_under_their_own_seed_and_leave_the_global_rng_alone():
    from sklearn.datasets import make_circles

    x, y = make_circles(300, noise=0.05, factor=0.5, random_state=0)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    model = MLPBaseline(hidden_dim=32, num_classes=2, seed=0)
    model(x[:2])  # lazy build under its own seed
    assert torch.equal(torch.rand(1), before)  # the global RNG did not move
    again = MLPBaseline(hidden_dim=32, num_classes=2, seed=0)
    again(x[:2])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model(x[:200]), y[:200])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(x[200:]).argmax(1) == y[200:]).float().mean() > 0.95
    assert CNNBaseline(8, num_classes=3)(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    for bad in (lambda: MLPBaseline(hidden_dim=0), lambda: CNNBaseline(num_classes=1),
                lambda: CNNBaseline(8, num_classes=3)(torch.rand(2, 5))):
        with pytest.raises(ValueError):
            bad()
