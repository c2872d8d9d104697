"""Component contracts: shapes, per-sample behaviour, clear errors for bad config values."""

from __future__ import annotations

import pytest
import torch

from lit_experiments.studies.satipatthana.components import (
    CNNAdapter,
    ConvDecoder,
    MLPAdapter,
    MLPDecoder,
    Sati,
    TaskDecoder,
    Vicara,
    VipassanaV41,
    Vitakka,
)
from lit_experiments.studies.satipatthana.components.vipassana import VipassanaInput


def test_cnn_adapter_is_per_sample_and_keeps_mostly_background_images_apart():
    torch.manual_seed(0)
    adapter = CNNAdapter(3, 16, 32, channels=[8, 16])
    x = torch.full((8, 3, 16, 16), 0.44)  # grey background ...
    for i in range(8):  # ... with one small square in a different place per image
        x[i, :, i:i + 3, 2 * (i % 4):2 * (i % 4) + 3] = torch.rand(3, 1, 1)
    z = adapter(x)
    assert torch.allclose(adapter(x[3:4]), z[3:4], atol=1e-6)
    zn = torch.nn.functional.normalize(z, dim=1)
    off = (zn @ zn.T)[~torch.eye(8, dtype=torch.bool)]
    assert off.mean() < 0.99
    raw = CNNAdapter(3, 16, 32, channels=[8, 16], standardize_input=False)
    rn = torch.nn.functional.normalize(raw(x), dim=1)
    assert (rn @ rn.T)[~torch.eye(8, dtype=torch.bool)].mean() > off.mean()


def test_decoders_shapes():
    s = torch.randn(5, 12)
    assert ConvDecoder(12, 3, 32, channels=[16, 8, 8])(s).shape == (5, 3, 32, 32)
    assert MLPDecoder(12, 6, out_shape=[1, 2, 3])(s).shape == (5, 1, 2, 3)
    assert TaskDecoder(4)(s, torch.randn(5, 3)).shape == (5, 4)  # lazy in_dim
    assert TaskDecoder(4, in_dim=12, use_context=False)(s, torch.randn(5, 3)).shape == (5, 4)


def test_vipassana_v41_heads_and_metrics_are_per_sample():
    torch.manual_seed(0)
    vitakka, vicara = Vitakka(8, n_probes=3).eval(), Vicara(8, 16, per_probe=True, n_probes=3)
    out = Sati(max_steps=8, energy_threshold=1e-3, min_steps=2)(vicara, vitakka(torch.randn(10, 8)))
    vip = VipassanaV41(None, gru_hidden_dim=6, metric_proj_dim=4)
    inp = VipassanaInput(out.s_star, out.santana, probes=vitakka.normalized_probes, recon_error=torch.rand(10))
    res = vip(inp)
    assert res.trust_features.shape == (10, 8) and res.v_ctx.shape == (10, 10)
    assert res.conformity_logit.shape == res.confidence_logit.shape == res.trust_logit.shape == (10,)
    one = vip(VipassanaInput(out.s_star[2:3], out.santana.select(torch.tensor([2])),
                             probes=vitakka.normalized_probes, recon_error=inp.recon_error[2:3]))
    assert torch.allclose(one.trust_logit, res.trust_logit[2:3], atol=1e-5)
    assert torch.allclose(one.v_ctx, res.v_ctx[2:3], atol=1e-5)


@pytest.mark.parametrize("build", [
    lambda: MLPAdapter(0, 4), lambda: CNNAdapter(1, 10, 4, channels=[4, 4]), lambda: Vitakka(4, temperature=0),
    lambda: Vitakka(4, alpha=1.5), lambda: Vicara(4, beta=1.0), lambda: Vicara(4, out_init_scale=-1.0), lambda: Sati(max_steps=0),
    lambda: Sati(max_steps=4, min_steps=5), lambda: Sati(energy_threshold=-1.0), lambda: TaskDecoder(1),
    lambda: ConvDecoder(4, image_size=10), lambda: ConvDecoder(4, output="tanh"),
    lambda: MLPDecoder(4, 6, out_shape=[2, 2]),
])
def test_bad_component_values_fail_clearly(build):
    with pytest.raises(ValueError):
        build()
