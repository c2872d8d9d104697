"""The slot model and SlotsModule: parts by constructor, shapes of the SAVi / DINOSAUR paths, decoders, the pixel
path, clear errors, and the module's training guards (F01: the reconstruction target never carries grad; clips of
a batch must differ)."""
from __future__ import annotations

import pytest
import torch

from lit_experiments.core.health import TrainingHealthError
from lit_experiments.studies.slots.decoders import MLPDecoder, TransformerDecoder
from lit_experiments.studies.slots.encoders import Encoded, FeatureInput, PixelEncoder
from lit_experiments.studies.slots.losses import ReconstructionLoss
from lit_experiments.studies.slots.model import SlotModel
from lit_experiments.studies.slots.module import SlotsModule
from lit_experiments.studies.slots.predictor import TransformerPredictor
from lit_experiments.studies.slots.slot_attention import SlotAttention

from .helpers import tiny_data, tiny_module, tiny_parts, tiny_trainer, video_batch


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



def test_bad_configuration_raises_clear_errors():
    with pytest.raises(KeyError, match="features"):
        SlotModel(FeatureInput(), SlotAttention(8, 2), MLPDecoder())({"video": torch.zeros(1, 1, 3, 8, 8)})
    with pytest.raises(ValueError, match="eval_masks"):
        SlotsModule(eval_masks="argmax")
    with pytest.raises(ValueError, match="grid"):
        SlotModel(FeatureInput(), SlotAttention(8, 2), MLPDecoder())({"features": torch.randn(1, 1, 15, 4)})



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



def test_f01_target_through_trainable_projection_is_caught_by_health_guard(monkeypatch):
    """The seed's bug put back into the product: FeatureInput returns its trainable projection as the target."""
    product_forward = FeatureInput.forward

    def target_through_projection(self: FeatureInput, batch: dict) -> Encoded:
        enc = product_forward(self, batch)
        return Encoded(sa_input=enc.sa_input, target=enc.sa_input, grid=enc.grid)

    monkeypatch.setattr(FeatureInput, "forward", target_through_projection)
    # the reconstruction must still match the target's size: project to the feature size itself
    module = tiny_module(parts=tiny_parts(projection_dim=16))
    with pytest.raises(TrainingHealthError, match="recon_target"):
        tiny_trainer(steps=2).fit(module, datamodule=tiny_data())



def test_f01_target_from_the_trainable_projection_under_no_grad_is_caught_by_health_guard(monkeypatch):
    """The seed's bug as its log describes it, in the product's FeatureInput: the trainable projection's output is
    the reconstruction target, computed under no_grad (so it never requires grad). The study declares its target's
    source, so the guard finds the target is a trainable part's output and stops the run."""
    product_forward = FeatureInput.forward

    def target_through_projection(self: FeatureInput, batch: dict) -> Encoded:
        enc = product_forward(self, batch)
        with torch.no_grad():
            target = self.projection(self._features(batch).float())
        return Encoded(sa_input=enc.sa_input, target=target, grid=enc.grid)

    monkeypatch.setattr(FeatureInput, "forward", target_through_projection)
    module = tiny_module(parts=tiny_parts(projection_dim=16))
    with pytest.raises(TrainingHealthError, match=r"target_grad.*'recon_target' is the output of .*projection"):
        tiny_trainer(steps=2).fit(module, datamodule=tiny_data())


def test_f01_projection_feeds_slot_attention_only_and_target_is_frozen():
    dm = tiny_data()
    module = tiny_module(parts=tiny_parts(projection_dim=8))
    trainer = tiny_trainer(steps=3)
    trainer.fit(module, datamodule=dm)  # the guard passes on the correct module
    assert trainer.global_step == 3
    batch = next(iter(dm.train_dataloader()))
    enc = module.model.encode(batch)
    assert enc.sa_input.shape[-1] == 8 and enc.sa_input.requires_grad
    assert not enc.target.requires_grad
    torch.testing.assert_close(enc.target, batch["features"].float())  # the frozen feature itself


class _SameClipForAll(SlotsModule):
    """A cache / loader bug put back: every clip of the batch carries the first clip's features."""

    def training_step(self, batch, batch_idx):
        batch = dict(batch)
        batch["features"] = batch["features"][:1].expand_as(batch["features"]).contiguous()
        return super().training_step(batch, batch_idx)



def test_identical_inputs_across_the_batch_are_caught_but_learned_init_is_not_flagged():
    with pytest.raises(TrainingHealthError, match="inputs"):
        tiny_trainer(steps=2).fit(tiny_module(_SameClipForAll), tiny_data())
    trainer = tiny_trainer(steps=2)
    module = tiny_module(parts=tiny_parts(pixels=True, learned=True, bilevel=True))
    trainer.fit(module, tiny_data(pixels=True))
    assert trainer.global_step == 2
