"""Component contracts: shapes, per-sample behaviour, sizes built from the data and the other parts, the baseline
parts, clear errors for bad config values."""

from __future__ import annotations

import pytest
import torch

from lit_experiments.studies.satipatthana.components import (
    CNNAdapter,
    CNNBaseline,
    ConvDecoder,
    MLPAdapter,
    MLPBaseline,
    ReconMLPDecoder,
    Sati,
    TaskDecoder,
    Vicara,
    VipassanaV40,
    VipassanaV41,
    Vitakka,
)
from lit_experiments.studies.satipatthana.components.vipassana import VipassanaInput

from .helpers import circles_batch, make_module


def test_cnn_adapter_is_per_sample_and_keeps_mostly_background_images_apart():
    torch.manual_seed(0)
    adapter = CNNAdapter(32, channels=[8, 16]).build((3, 16, 16))
    x = torch.full((8, 3, 16, 16), 0.44)  # grey background ...
    for i in range(8):  # ... with one small square in a different place per image
        x[i, :, i:i + 3, 2 * (i % 4):2 * (i % 4) + 3] = torch.rand(3, 1, 1)
    z = adapter(x)
    assert torch.allclose(adapter(x[3:4]), z[3:4], atol=1e-6)
    zn = torch.nn.functional.normalize(z, dim=1)
    off = (zn @ zn.T)[~torch.eye(8, dtype=torch.bool)]
    assert off.mean() < 0.99
    raw = CNNAdapter(32, channels=[8, 16], standardize_input=False)
    rn = torch.nn.functional.normalize(raw(x), dim=1)
    assert (rn @ rn.T)[~torch.eye(8, dtype=torch.bool)].mean() > off.mean()


def test_decoders_shapes():
    s = torch.randn(5, 12)
    assert ConvDecoder(channels=[16, 8, 8]).build(12, (3, 32, 32))(s).shape == (5, 3, 32, 32)
    assert ReconMLPDecoder().build(12, (1, 2, 3))(s).shape == (5, 1, 2, 3)
    assert TaskDecoder(4)(s, torch.randn(5, 3)).shape == (5, 4)  # lazy in_dim
    assert TaskDecoder(4, use_context=False)(s, torch.randn(5, 3)).shape == (5, 4)
    assert TaskDecoder(4, use_context=False).build(12).in_dim == 12


def test_vipassana_v41_heads_and_metrics_are_per_sample():
    torch.manual_seed(0)
    vitakka, vicara = Vitakka(num_probes=3).build(8).eval(), Vicara(16, per_probe=True).build(8, 3)
    out = Sati(max_steps=8, energy_threshold=1e-3, min_steps=2)(vicara, vitakka(torch.randn(10, 8)))
    vip = VipassanaV41(gru_hidden_dim=6, metric_proj_dim=4)
    inp = VipassanaInput(out.s_star, out.santana, probes=vitakka.normalized_probes, recon_error=torch.rand(10))
    res = vip(inp)
    assert res.trust_features.shape == (10, 8) and res.v_ctx.shape == (10, 10)
    assert res.conformity_logit.shape == res.confidence_logit.shape == res.trust_logit.shape == (10,)
    one = vip(VipassanaInput(out.s_star[2:3], out.santana.select(torch.tensor([2])),
                             probes=vitakka.normalized_probes, recon_error=inp.recon_error[2:3]))
    assert torch.allclose(one.trust_logit, res.trust_logit[2:3], atol=1e-5)
    assert torch.allclose(one.v_ctx, res.v_ctx[2:3], atol=1e-5)


@pytest.mark.parametrize("build", [
    lambda: MLPAdapter(0), lambda: CNNAdapter(4, channels=[4, 4]).build((1, 10, 10)), lambda: Vitakka(temperature=0),
    lambda: Vitakka(alpha=1.5), lambda: Vicara(beta=1.0), lambda: Vicara(out_init_scale=-1.0), lambda: Sati(max_steps=0),
    lambda: Sati(max_steps=4, min_steps=5), lambda: Sati(energy_threshold=-1.0), lambda: TaskDecoder(1),
    lambda: ConvDecoder().build(4, (1, 10, 10)), lambda: ConvDecoder(output="tanh"),
    lambda: ReconMLPDecoder(hidden_dim=0), lambda: Vitakka(num_probes=0), lambda: CNNAdapter(4).build((1, 16, 8)),
])
def test_bad_component_values_fail_clearly(build):
    with pytest.raises(ValueError):
        build()


def test_sizes_come_from_the_adapter_the_probes_and_the_data():
    """Sizes said once: the adapter's ``dim`` sizes every part, Vitakka's ``num_probes`` the per-probe refiners,
    the batch the adapter's input and the reconstruction, the module's ``num_classes`` the heads."""
    module = make_module(dim=12, lazy=True, sati=Sati(max_steps=3))
    module.vicara.per_probe = True
    assert module.vitakka.probes is None and not module.vipassana.is_built and module.task_decoder.net is None
    module.dry_run(circles_batch(8))
    assert module.adapter.in_dim == 2 and module.vitakka.probes.shape == (4, 12)
    assert len(module.vicara.refiners) == 4 and module.recon_decoder.out_shape == (2,)
    assert module.task_decoder.in_dim == 12 + module.vipassana.context_dim and module.task_decoder.num_classes == 2
    assert module.aux_head.in_features == 12 and module.aux_head.out_features == 2
    with pytest.raises(ValueError, match="num_classes"):
        type(module)(adapter=MLPAdapter(4), vitakka=Vitakka(), vicara=Vicara(), vipassana=VipassanaV40(),
                     recon_decoder=ReconMLPDecoder(), task_decoder=TaskDecoder(3), num_classes=2)


def test_the_dry_run_initialises_the_parts_as_at_construction():
    """The parts draw their weights from the RNG state at the module's construction, and the global RNG ends where
    a build at construction leaves it, whatever the data drew in between (the demo's numbers did not move)."""
    def build(data_draws_first: bool):
        module = make_module(lazy=True)
        if data_draws_first:
            torch.rand(100)  # e.g. a training void pool larger than the data pairs the example batch
        module.dry_run(circles_batch(8))
        if not data_draws_first:
            torch.rand(100)
        return {k: v.clone() for k, v in module.state_dict().items()}, torch.rand(3)

    (first, after_first), (later, after_later) = build(True), build(False)
    assert all(torch.equal(first[k], later[k]) for k in first)
    assert torch.equal(after_first, after_later)  # the stream after the build is the same as well


def test_vipassana_v40_lazy_builds_on_first_forward():
    vip = VipassanaV40()
    assert not vip.is_built and len(list(vip.parameters())) == 0
    module = make_module()
    module.eval()
    with torch.no_grad():
        out = module.samatha(circles_batch(8)["x"])
    vip(VipassanaInput(out.s_star, out.santana))
    assert vip.is_built and vip.trust_head[0].in_features == 2


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
