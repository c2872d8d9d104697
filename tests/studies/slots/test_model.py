"""Shapes and behaviour of the slot model parts: slot attention, SAVi predictor, decoders, losses."""
from __future__ import annotations

import pytest
import torch

from lit_experiments.studies.slots.datamodule import SlotsDataModule
from lit_experiments.studies.slots.decoders import MLPDecoder, TransformerDecoder
from lit_experiments.studies.slots.encoders import FeatureInput, PixelEncoder
from lit_experiments.studies.slots.losses import ReconstructionLoss, reconstruction_loss, slot_diversity_loss
from lit_experiments.studies.slots.model import SlotModel
from lit_experiments.studies.slots.module import SlotsModule
from lit_experiments.studies.slots.predictor import TransformerPredictor
from lit_experiments.studies.slots.slot_attention import GaussianSlotInit, LearnedSlotInit, SlotAttention

from .helpers import tiny_parts, video_batch


def model_of(**kw) -> SlotModel:
    return SlotModel(**{k: v for k, v in tiny_parts(**kw).items()})


def test_predictor_keeps_slot_shape_and_mixes_slots():
    torch.manual_seed(0)
    pred = TransformerPredictor(hidden=32, heads=4, slot_dim=16)
    slots = torch.randn(2, 5, 16)
    out = pred(slots)
    assert out.shape == (2, 5, 16)
    assert not torch.allclose(out, slots)
    changed = slots.clone()
    changed[:, 0] = torch.randn(2, 16)  # one slot changes -> the others' predictions change too (attention among slots)
    assert not torch.allclose(pred(changed)[:, 1], out[:, 1])
    with pytest.raises(ValueError):
        pred(torch.randn(5, 16))


def test_video_model_shapes_and_iteration_schedule():
    torch.manual_seed(0)
    model = model_of()
    model.grouper.iters_video = 2
    batch = video_batch(b=2, t=3, n=16, c=8)
    model.build(batch)
    calls = []
    model.grouper.gru.register_forward_hook(lambda *a: calls.append(1))
    out = model(batch)
    assert len(calls) == 3 + 2 + 2  # 3 iterations on frame 0, 2 on each later frame
    assert out.slots.shape == (2, 3, 4, 16)
    assert out.masks.shape == out.attn.shape == (2, 3, 4, 16)
    assert out.recon.shape == out.target.shape == (2, 3, 16, 8)
    torch.testing.assert_close(out.masks.sum(2), torch.ones(2, 3, 16))
    torch.testing.assert_close(out.attn.sum(2), torch.ones(2, 3, 16))
    assert out.grid == (4, 4) and model.predictor.built
    # sizes inferred from the data and from the grouper, typed nowhere
    assert model.grouper.input_norm.normalized_shape == (8,) and model.grouper.pos_emb.weight.shape == (16, 16)
    assert model.decoder.out_dim == 8 and model.decoder.first.in_features == 16
    assert not out.target.requires_grad and out.recon.requires_grad


def test_without_predictor_frames_are_grouped_independently():
    torch.manual_seed(0)
    model = model_of(num_slots=3, dim=8, predictor=False, learned=True)
    batch = video_batch(b=1, t=2, n=16, c=8)
    out = model(batch)
    batch2 = {**batch, "features": batch["features"].clone()}
    batch2["features"][:, 0] = torch.randn_like(batch2["features"][:, 0])
    out2 = model(batch2)
    torch.testing.assert_close(out.slots[:, 1], out2.slots[:, 1])
    assert not torch.allclose(out.slots[:, 0], out2.slots[:, 0])


def test_slot_attention_softmax_is_over_slots_and_tau_sharpens():
    torch.manual_seed(0)
    feats = torch.randn(2, 20, 8)
    sa = SlotAttention(16, 4, iters=1, tau=1.0, init=LearnedSlotInit(), in_dim=8, pos_emb=False)
    soft = sa(feats).attn
    sa.tau = 0.1
    sharp = sa(feats).attn
    torch.testing.assert_close(soft.sum(1), torch.ones(2, 20))
    assert sharp.max(1).values.mean() > soft.max(1).values.mean()
    with pytest.raises(ValueError):
        SlotAttention(16, 4, tau=0.0)
    with pytest.raises(ValueError, match="grid"):
        SlotAttention(16, 4, in_dim=8)  # a positional embedding needs the grid
    assert isinstance(SlotAttention().init, GaussianSlotInit)


def test_decoders_return_masks_that_partition_positions():
    slots = torch.randn(3, 4, 16)
    for dec in (MLPDecoder(hidden=32, layers=3), TransformerDecoder(depth=2, hidden=32)):
        assert not list(dec.parameters())  # lazy: nothing exists before the sizes are known
        dec.build(16, 10, 36, grid=(6, 6))
        out = dec(slots)
        assert out.recon.shape == (3, 36, 10) and out.masks.shape == (3, 4, 36)
        torch.testing.assert_close(out.masks.sum(1), torch.ones(3, 36))
    with pytest.raises(ValueError):
        MLPDecoder(layers=1)


def test_pixel_path_reconstructs_frames_with_a_trainable_encoder():
    torch.manual_seed(0)
    model = model_of(pixels=True, num_slots=3)
    video = torch.randint(0, 256, (2, 2, 3, 16, 16), dtype=torch.uint8)
    out = model({"video": video})
    assert out.recon.shape == (2, 2, 256, 3) and out.masks.shape == (2, 2, 3, 256)
    assert out.grid == (16, 16)
    assert 0.0 <= out.target.min() and out.target.max() <= 1.0 and not out.target.requires_grad
    out.recon.sum().backward()
    assert model.encoder.net[0].weight.grad is not None
    assert isinstance(model.encoder, PixelEncoder)


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


def test_bad_configuration_raises_clear_errors():
    with pytest.raises(KeyError, match="features"):
        SlotModel(FeatureInput(), SlotAttention(8, 2), MLPDecoder())({"video": torch.zeros(1, 1, 3, 8, 8)})
    with pytest.raises(ValueError, match="eval_masks"):
        SlotsModule(eval_masks="argmax")
    with pytest.raises(ValueError, match="movi_root"):
        SlotsDataModule(dataset="movi")
    with pytest.raises(ValueError, match="grid"):
        SlotModel(FeatureInput(), SlotAttention(8, 2), MLPDecoder())({"features": torch.randn(1, 1, 15, 4)})


def test_bilevel_slot_attention_same_forward_straight_through_init_gradient():
    torch.manual_seed(0)
    feats = torch.randn(2, 20, 8)
    plain = SlotAttention(16, 4, iters=3, init=LearnedSlotInit(), in_dim=8, pos_emb=False)
    bilevel = SlotAttention(16, 4, iters=3, init=LearnedSlotInit(), bilevel=True, in_dim=8, pos_emb=False)
    bilevel.load_state_dict(plain.state_dict())
    out_p, out_b = plain(feats), bilevel(feats)
    torch.testing.assert_close(out_b.slots, out_p.slots)  # BO-QSA changes gradients only
    out_b.slots.pow(2).sum().backward()
    got = bilevel.init.slots.grad.clone()
    # reference: two iterations without grad, then one with grad from a leaf; its grad is the init's
    bilevel.zero_grad()
    with torch.no_grad():
        mid = bilevel(feats, iters=2).slots
    leaf = mid.clone().requires_grad_(True)
    plain_last = SlotAttention(16, 4, iters=1, init=LearnedSlotInit(), in_dim=8, pos_emb=False)
    plain_last.load_state_dict(plain.state_dict())
    plain_last(feats, slots=leaf).slots.pow(2).sum().backward()
    torch.testing.assert_close(got, leaf.grad.sum(0, keepdim=True))
    # the full unrolled gradient differs (earlier iterations contribute there)
    plain.zero_grad()
    out_p.slots.pow(2).sum().backward()
    assert not torch.allclose(plain.init.slots.grad, got)


def test_module_takes_parts_by_constructor_and_no_string_picks_a_class():
    import inspect

    params = [p for p in inspect.signature(SlotsModule.__init__).parameters if p != "self"]
    assert len(params) <= 12, params
    assert {"encoder", "grouper", "decoder", "predictor", "loss"} <= set(params)
    # the model's signature is its parts, not a copy of the module's hyper-parameters
    assert [p for p in inspect.signature(SlotModel.__init__).parameters if p != "self"] == [
        "encoder", "grouper", "decoder", "predictor"]
    module = SlotsModule(encoder=FeatureInput(4), grouper=SlotAttention(8, 3, mlp_hidden=8),
                         decoder=MLPDecoder(8), predictor=None, loss=ReconstructionLoss("cosine"))
    assert module.model.predictor is None and module.recon_loss.kind == "cosine"
    module.dry_run({"features": torch.randn(2, 2, 16, 6)})
    assert module.model.encoder.projection.in_features == 6  # projection input from the data
    assert module.model.grouper.input_norm.normalized_shape == (4,)  # slot-attention input from the projection
