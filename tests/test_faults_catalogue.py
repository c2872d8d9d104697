"""bench/faults.py (issue 25's fault cases): the catalogue is well formed, and its checks see a bad outcome.

The checks are run on real (in-process, tiny) toy runs: with the product as it is a case passes; with a product fix
taken out again (monkeypatched) the same case's check reports lost or misstated data.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import faults  # noqa: E402

GROUPS = {"sweep", "cv", "report", "record", "corruption", "console"}


def by_id(case_id: str) -> faults.Case:
    return next(c for c in faults.CASES if c.id == case_id)


def test_the_catalogue_is_well_formed():
    ids = [c.id for c in faults.CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(ids) >= 35
    for c in faults.CASES:
        assert c.id and c.id == c.id.lower() and " " not in c.id
        assert c.before.strip(), c.id
        assert c.group in GROUPS, c.id
        assert callable(c.command) and callable(c.check), c.id
        assert c.setup is None or callable(c.setup), c.id
    # the groups name the sections: each has its cases
    assert {c.group for c in faults.CASES} == GROUPS


def test_the_table_has_the_promised_columns():
    row = faults.Row("x", "sweep", "before | with a bar", exit=2, lines=3, first_line="lit-exp: error: x",
                     data_lost=True, why=["sweep.json says a running"])
    head, rule, line = faults.table([row]).splitlines()
    assert head == "| case | before | exit | lines | first line | traceback | data lost |"
    assert line.count(" | ") == 6 and "before \\| with a bar" in line and "yes: sweep.json says" in line


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """Cases run in this process (so a monkeypatched product reaches them), the shared sweep kept small."""
    mp = pytest.MonkeyPatch()
    mp.setattr(faults, "SWEEP_SEEDS", "0")
    mp.setenv("WANDB_MODE", "disabled")
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield faults.Ctx(ROOT, tmp_path_factory.mktemp("faults"), inprocess=True)
    mp.undo()


def test_the_sweep_state_check_sees_a_sweep_json_that_misstates_its_runs(ctx, monkeypatch):
    """`sweep-states-reconciled`: a rerun over a sweep.json that says `running` / `pending` for finished runs. With
    the product's reconciliation it passes; with reconciliation made a no-op (the bug put back) the check reports
    the misstated states."""
    from lit_experiments.experiments import sweep

    case = by_id("sweep-states-reconciled")
    good = faults.run_case(ctx, case)
    assert not good.setup_error and good.exit == 0 and not good.data_lost, good.why
    monkeypatch.setattr(sweep, "reconcile", lambda entry, out: None)
    bad = faults.run_case(ctx, case)
    assert not bad.setup_error, bad.setup_error
    assert bad.data_lost and any("sweep.json says" in why for why in bad.why), bad.why


def test_a_fit_that_trains_nothing_fails_with_a_record(ctx, monkeypatch):
    """`fit-trains-nothing`: `lit-exp fit --trainer.limit_train_batches 0` ended `done` (issue 25: a stage that runs
    no step is an error however it is configured); it fails and its results.json says so. With the check in
    LitCLI.after_fit taken out, the case reports the run that ended done."""
    from lit_experiments.core import litcli

    case = by_id("fit-trains-nothing")
    good = faults.run_case(ctx, case)
    assert good.exit == 1 and not good.data_lost and not good.traceback, good.why

    real = litcli.LitCLI.after_fit

    def without_the_check(self):  # the bug put back: after_fit does not see that no step ran
        monkeypatch.setattr(type(self.trainer), "global_step", property(lambda _: 1))
        real(self)

    monkeypatch.setattr(litcli.LitCLI, "after_fit", without_the_check)
    bad = faults.run_case(ctx, case)
    assert bad.exit == 0 and bad.data_lost and "ended done" in "; ".join(bad.why), bad.why
