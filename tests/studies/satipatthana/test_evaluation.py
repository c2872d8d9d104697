"""The test metrics of ``evaluation.py`` against sklearn / numpy references, and its figures."""

from __future__ import annotations

import pytest
import torch

from lit_experiments.studies.satipatthana.evaluation import (
    SatipatthanaTestMetrics,
    decision_boundary,
    energy_trajectories,
    trust_histograms,
)


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


def test_figures_draw_from_the_gathered_rows():
    gen = torch.Generator().manual_seed(0)
    trust = {p: torch.rand(20, generator=gen) for p in ("clean", "void")}
    assert len(trust_histograms(trust).axes) == 1
    assert len(energy_trajectories({"clean": torch.rand(5, 20, generator=gen)}).axes) == 1
    x, y = torch.randn(30, 2, generator=gen), torch.randint(2, (30,), generator=gen)
    fig = decision_boundary(lambda p: (torch.sigmoid(p[:, 0]), torch.sigmoid(-p.norm(dim=1))), x, y,
                            x_void=3 * torch.randn(10, 2, generator=gen), resolution=16)
    assert len(fig.axes) == 4  # two panels and their colour bars
