"""StageFreeze unit behaviour: globs, eval mode of frozen parts, pinned frozen backbones."""

from __future__ import annotations

from torch import nn

from lit_experiments.core.freezing import apply_stage_freeze, component_table


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
