"""GatheredRows returns every column with its rows, whatever their number: torchmetrics' compute wrapper squeezes a
one-element result to 0-d, which made a distill validation of one unit (an evaluation batch of 1, as a real-size
preflight runs) fail in ``torch.cat`` of its calibration records."""
from __future__ import annotations

import pytest
import torch

from lit_experiments.metrics.gathered import GatheredRows


@pytest.mark.parametrize("batches", [[1], [1, 1], [3, 2]])
def test_columns_keep_their_row_dimension_for_any_number_of_rows(batches):
    rows = GatheredRows(["score", "logits", "index"], dtypes={"index": torch.long})
    torch.manual_seed(0)
    given = [{"score": torch.randn(b), "logits": torch.randn(b, 1), "index": torch.arange(b)} for b in batches]
    for g in given:
        rows.update(**g)
    out = rows.compute()
    for name in ("score", "logits", "index"):
        want = torch.cat([g[name] for g in given])  # the reference: the rows in order of arrival
        assert out[name].shape == want.shape, (name, out[name].shape)
        torch.testing.assert_close(out[name], want.to(out[name].dtype))


def test_one_validation_unit_fits_the_distill_calibration():
    """The product path that failed: one unit's calibration records gathered and concatenated for the fit."""
    from lit_experiments.studies.distill.components.calibration import calibration_records, cat_records

    outputs = {"pred_logits": torch.tensor([[2.0, -1.0]]), "presence_logits": torch.tensor([[0.5]]),
               "pred_masks": torch.zeros(1, 2, 4, 4)}
    outputs["pred_masks"][0, 0, :2, :2] = 5.0
    target = torch.zeros(1, 4, 4)
    target[0, :2, :2] = 1
    rows = GatheredRows(["query_logits", "query_labels", "presence_labels", "presence_logits"])
    rows.update(**calibration_records(outputs, [{"masks": target}]))
    records = cat_records([rows.compute()])
    assert records["query_labels"].tolist() == [[1.0, 0.0]] and records["presence_logits"].shape == (1,)
