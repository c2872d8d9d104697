"""The console metric table after fit / validate / test (issue 25): short for a run with many metrics, the
headline metrics and their floors / references always first, the rest counted in one line naming results.json."""

from __future__ import annotations

from lit_experiments.core.results import TABLE_LINES, format_metric_table, format_test_table, reference_row


def many_metrics(n: int = 56) -> dict:
    top = [f"test/m{i}" for i in range(n // 2)]
    nested = [f"test/video/teacher/m{i}" for i in range(n - len(top))]
    return {k: i / 100 for i, k in enumerate([x for pair in zip(nested, top) for x in pair])}


def test_a_run_with_many_test_metrics_prints_a_short_table_headline_and_floors_first():
    test = many_metrics()
    headline = {"test/video/teacher/m20": test["test/video/teacher/m20"], "test/m3": test["test/m3"]}
    data = {"run_name": "distill", "test": test, "headline": headline, "references": {
        "test/video/teacher/m20": [reference_row("predict_nothing", 0.0), reference_row("teacher", 0.75, "reference")],
        "test/m7": [reference_row("chance", 0.1)]}}  # not a headline: its rows stay in results.json
    lines = format_test_table(data, "/runs/distill/results.json").splitlines()
    assert lines[0] == "test metrics (distill):"
    # the headline metrics first (a nested, late one too), each followed by its floor / reference rows
    assert lines[1].split() == ["test/video/teacher/m20", f"{test['test/video/teacher/m20']:.4f}", "headline"]
    assert lines[2].split() == ["floor", "predict_nothing", "0.0000"]
    assert lines[3].split() == ["reference", "teacher", "0.7500"]
    assert lines[4].split() == ["test/m3", f"{test['test/m3']:.4f}", "headline"]
    assert not any("chance" in line for line in lines)
    body = lines[1:-1]
    assert len(body) == TABLE_LINES, lines  # not one line per metric: 56 metrics, a 15-line table
    shown = {line.split()[0] for line in body}
    hidden = len(test) - len(shown & set(test))
    assert hidden == 56 - (TABLE_LINES - 2)  # 2 reference rows among the 15 lines
    assert lines[-1].strip() == f"… and {hidden} more in /runs/distill/results.json"
    # top-level names before nested ones
    assert all(name.startswith("test/m") for name in shown - {"test/video/teacher/m20", "floor", "reference"})


def test_a_long_headline_block_still_leaves_room_for_some_other_metrics():
    test = many_metrics(40)
    heads = [k for k in test if k.startswith("test/video")][:8]
    refs = {k: [reference_row("a", 0.0), reference_row("b", 0.1)] for k in heads}
    lines = format_metric_table("t", test, headline=heads, references=refs, more_in="r.json").splitlines()
    assert [line.split()[0] for line in lines[1:25:3]] == heads  # all 8 headline metrics, each with its 2 rows
    others = lines[25:-1]
    assert len(others) == 5 and lines[-1].strip() == f"… and {40 - 8 - 5} more in r.json"


def test_a_run_with_few_metrics_prints_them_all():
    metrics = {f"val/m{i}": float(i) for i in range(TABLE_LINES)}
    lines = format_metric_table("fit metrics (toy, last epoch)", metrics).splitlines()
    assert len(lines) == 1 + TABLE_LINES and not any("more in" in line for line in lines)
    # one metric past the limit is shown, never replaced by a "1 more" line
    metrics["val/extra"] = None
    lines = format_metric_table("t", metrics).splitlines()
    assert len(lines) == 2 + TABLE_LINES and lines[-1].split() == ["val/extra", "nan/inf", "(null)"]
    assert format_metric_table("t", {}) == ""
