"""Stage losses and the stage-2 path split (the loss dict's contract is checked in test_module.py)."""

from __future__ import annotations

import pytest
import torch

from lit_experiments.studies.satipatthana.losses import (
    path_sizes,
    per_sample_recon_error,
    probe_diversity_loss,
    recon_loss,
    stability_loss,
    trust_bce,
    void_energy_loss,
)


def test_trust_bce_accepts_soft_targets():
    logits = torch.zeros(4, requires_grad=True)
    loss = trust_bce(logits, torch.tensor([1.0, 0.0, 0.5, 0.25]))
    assert loss.requires_grad and abs(float(loss.detach()) - float(torch.log(torch.tensor(2.0)))) < 1e-6


def test_stability_recon_and_void_energy_values():
    s_t, s_prev = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert stability_loss((s_t, s_prev)) == pytest.approx((5.0 + 2.0) / 2)
    x, x_hat = torch.zeros(2, 1, 2, 2), torch.ones(2, 4)
    assert recon_loss(x_hat, x) == pytest.approx(1.0)
    assert per_sample_recon_error(x_hat, x).tolist() == [1.0, 1.0]
    e_in, e_void = torch.zeros(3), torch.full((3,), torch.e - 1)  # log1p: 0 and 1
    assert void_energy_loss(e_in, e_void, margin=1.0) == pytest.approx(0.0, abs=1e-6)
    assert void_energy_loss(e_in, e_void, margin=2.0) == pytest.approx(1.0, abs=1e-6)
    assert probe_diversity_loss(torch.ones(1, 4)) == 0.0


def test_path_sizes_are_exact_and_bad_ratios_fail():
    assert path_sizes(10, {"clean": 1, "void": 1}) == {"clean": 5, "augmented": 0, "drunk": 0, "mismatch": 0,
                                                        "void": 5}
    for bad in ({"clean": -1.0, "void": 1.0}, {"clean": 0.0, "void": 0.0}, {"void": 1.0}):
        with pytest.raises(ValueError):
            path_sizes(10, bad)
