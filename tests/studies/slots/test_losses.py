"""The reconstruction loss part and the diversity term: ranges, spatial normalisation refused (F02), channel_norm
independent of the backbone's feature scale (F03)."""
from __future__ import annotations

import pytest
import torch

from lit_experiments.studies.slots.losses import (
    ReconstructionLoss,
    check_loss_name,
    reconstruction_loss,
    slot_diversity_loss,
)


def test_losses_and_diversity_range():
    t = torch.randn(2, 16, 8)
    assert reconstruction_loss(t.clone(), t, "mse").loss.item() == pytest.approx(0.0, abs=1e-7)
    assert reconstruction_loss(t.clone(), t, "cosine").loss.item() == pytest.approx(0.0, abs=1e-6)
    # predicting the per-sample mean feature explains none of the variance over positions
    mean = t.mean(dim=1, keepdim=True).expand_as(t)
    assert reconstruction_loss(mean, t, "mse").relative.item() == pytest.approx(1.0, rel=1e-4)
    same = torch.ones(2, 4, 8)
    orth = torch.eye(4).unsqueeze(0).repeat(2, 1, 1)
    assert slot_diversity_loss(same).item() == pytest.approx(1.0)
    assert slot_diversity_loss(orth).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown"):
        reconstruction_loss(t, t, "l1")
    with pytest.raises(ValueError, match="unknown"):
        ReconstructionLoss("l1")


@pytest.mark.parametrize("name", ["spatial", "spatial_norm", "instance_norm"])
def test_f02_spatial_normalisation_is_rejected(name):
    with pytest.raises(ValueError, match="F02"):
        check_loss_name(name)
    with pytest.raises(ValueError, match="F02"):
        ReconstructionLoss(name)



def test_f02_channel_norm_keeps_position_differences():
    # one channel-constant shift per position is removed; a per-channel offset over space is not
    target = torch.randn(2, 16, 8)
    spatially_flattened = target - target.mean(dim=1, keepdim=True)  # what spatial normalisation would do
    assert reconstruction_loss(spatially_flattened, target, "channel_norm").loss > 1e-3



def test_f03_channel_norm_is_invariant_to_backbone_feature_scale_mse_is_not():
    torch.manual_seed(0)
    target, recon = torch.randn(2, 3, 16, 8), torch.randn(2, 3, 16, 8)
    for scale in (2.4, 4.0):  # DINOv2-like vs DINOv1-like feature std
        cn = reconstruction_loss(scale * recon, scale * target, "channel_norm")
        ref = reconstruction_loss(recon, target, "channel_norm")
        torch.testing.assert_close(cn.loss, ref.loss, rtol=1e-4, atol=1e-5)
        mse = reconstruction_loss(scale * recon, scale * target, "mse")
        mse_ref = reconstruction_loss(recon, target, "mse")
        assert mse.loss.item() == pytest.approx(scale**2 * mse_ref.loss.item(), rel=1e-4)
        # the reported relative loss compares backbones with different scales
        assert mse.relative.item() == pytest.approx(mse_ref.relative.item(), rel=1e-4)
