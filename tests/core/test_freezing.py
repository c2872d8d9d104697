"""StageFreeze unit behaviour: globs, eval mode of frozen parts, pinned frozen backbones, dead globs."""

from __future__ import annotations

import pytest
from torch import nn

from lit_experiments.core.freezing import apply_stage_freeze, component_table
from lit_experiments.core.health import HealthError


class Pinned(nn.Module):
    always_frozen = True

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Pinned()
        self.adapter = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
        self.head = nn.Linear(4, 2)


def test_globs_select_trainable_and_frozen_modules_go_to_eval():
    net = Net()
    frozen = apply_stage_freeze(net, ["head"])
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert not net.adapter.training and not net.adapter[1].training and not net.adapter[2].training
    assert net.head.training
    assert net.adapter in frozen
    # a later stage unfreezes the adapter: it goes back to train mode
    apply_stage_freeze(net, ["adapter", "head"])
    assert net.adapter.training and net.adapter[1].training


def test_always_frozen_modules_stay_frozen_under_a_star_glob():
    net = Net()
    apply_stage_freeze(net, ["*"])
    assert not any(p.requires_grad for p in net.backbone.parameters())
    assert not net.backbone.training and not net.backbone.bn.training
    assert all(p.requires_grad for p in net.head.parameters())
    table = component_table(net, "s")
    assert "backbone" in table and "stage 's'" in table


def test_f09_dead_glob_among_live_ones_is_an_error_naming_it():
    net = Net()
    with pytest.raises(HealthError) as info:
        apply_stage_freeze(net, ["head", "adapter.9.*"], stage="tune")
    message = str(info.value)
    assert "'adapter.9.*' matches no parameter" in message and "stage 'tune'" in message and "F09" in message
    assert "'head' matches" not in message  # only the dead glob is blamed
    assert "nearest names: ['adapter" in message  # the closest real names
    assert "['backbone', 'adapter', 'head']" in message  # the parts with parameters


def test_glob_that_selects_only_an_always_frozen_backbone_is_an_error():
    with pytest.raises(HealthError, match=r"'backbone' matches only parameters of always-frozen modules"):
        apply_stage_freeze(Net(), ["backbone", "head"])


def test_live_globs_pass_and_a_star_over_a_pinned_backbone_is_not_dead():
    net = Net()
    apply_stage_freeze(net, ["adapter.0", "head.weight"])
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["adapter.0.weight", "adapter.0.bias",
                                                                         "head.weight"]
    apply_stage_freeze(net, ["*"])


def test_f19_affine_free_batchnorm_of_a_trainable_part_keeps_updating_its_statistics():
    """SimSiam's projector ends in a BatchNorm without parameters. Frozen by "no trainable parameter", its running
    statistics never moved and every eval-mode embedding pointed the same way (all cosines > 0.99, F19)."""
    import torch

    from lit_experiments.studies.retrieval.parts import Projector

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, affine=False))
            self.projector = Projector(out_dim=6, hidden=8)
            self.projector.build(8)

    net = Net()
    frozen = apply_stage_freeze(net, ["projector"])
    last_bn = net.projector.net[1]
    assert not last_bn.affine and last_bn.training, "the trainable projector's affine-free BN must stay in train mode"
    assert last_bn not in frozen
    frozen_bn = net.backbone[1]  # the same kind of module in a frozen part is frozen
    assert frozen_bn in frozen and not frozen_bn.training
    before = last_bn.running_mean.clone()
    net.projector(net.backbone(torch.randn(16, 4) + 3.0))
    assert not torch.equal(before, last_bn.running_mean), "running statistics must move while the stage trains"
    # under a pinned (always_frozen) part the same module stays frozen, whatever the globs say
    net.backbone.always_frozen = True
    frozen = apply_stage_freeze(net, ["*"])
    assert frozen_bn in frozen and last_bn not in frozen
