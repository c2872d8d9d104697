"""The grouper part: softmax over slots at temperature tau, BO-QSA (bilevel) gradients, the learned positional
embedding (F04)."""
from __future__ import annotations

import pytest
import torch

from lit_experiments.studies.slots.slot_attention import GaussianSlotInit, LearnedSlotInit, SlotAttention


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



def test_f04_positional_embedding_changes_the_slot_attention_input():
    torch.manual_seed(0)
    with_pos = SlotAttention(16, 3, in_dim=8, grid=(4, 4))
    without = SlotAttention(16, 3, in_dim=8, pos_emb=False)
    without.load_state_dict({k: v for k, v in with_pos.state_dict().items() if not k.startswith("pos_emb")})
    feats = torch.randn(1, 1, 8).expand(2, 16, 8)  # identical features at every position
    x_on, x_off = with_pos.prepare_input(feats), without.prepare_input(feats)
    assert not torch.allclose(x_on, x_off)
    torch.testing.assert_close(x_on - x_off, with_pos.pos_emb.weight.expand(2, -1, -1))
    assert x_off[0].std(dim=0).max() < 1e-5 < x_on[0].std(dim=0).max()  # positions only differ with pos-emb
