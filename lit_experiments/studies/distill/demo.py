"""`lit-exp distill-demo`: the distill study's demo: stand-in teacher, encoder -> decoder -> video, test, latency card.

    lit-exp distill-demo -c configs/distill/demo.yaml --run_dir runs/distill/demo [--seed_everything N] [--threads 1]
        [--no-card]

1. ``lit-exp curriculum`` of the config (its ``# base:`` files first) into ``run_dir``: the stand-in teacher of
   ``data.init_args.teacher`` (:class:`~.standin.StandinTeacher`: trained once, cached, scored against ground
   truth), the three stages, and the test (student and teacher in one table, the clip test, the F46 numbers,
   the gallery in ``run_dir/distill/gallery``).
2. The latency card (:func:`~.deploy.latency_card`) of the final checkpoint in ``run_dir/deploy``: teacher,
   student fp32, student int8 weight-only (torchao) and the student's ONNX export in ONNX Runtime, each with its
   test mIoU against ground truth (all test image units; students at their stored calibration, the teacher at
   0.5), latency per unit and size, measured in one process.
3. ``run_dir/results.json`` gains ``latency_card``; the headline is printed beside its floors (F49): the student's
   mIoU on positive units (THE headline), the teacher's and their ratio, each with the predict-nothing and
   prompt-blind floors computed on the same test units; concept responsiveness with paraphrase stability beside
   it (each model at its validation calibration); the teacher's score on every prompt family before distillation
   (F53).

``--seed_everything N`` seeds the tool (``lightning.seed_everything(N)``) and the run: every random choice of the
run (training order, prompts, the stand-in teacher's training) is derived from it unless the YAML pins it (F50).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lit_experiments.core.errors import ConfigError

HEADLINE_SHOWN = ("test/miou_pos", "test/teacher_miou_pos", "test/miou_pos_ratio", "test/miou", "test/teacher_miou")
OTHER_SHOWN = ("test/teacher_presence_f1", "test/presence_f1", "test/teacher_il_mcc", "test/il_mcc",
               "test/video/student/miou", "test/video/teacher/miou")


def final_checkpoint(run_dir: Path, results: dict[str, Any]) -> Path:
    """The last stage's ``final.ckpt`` recorded in ``results.json``."""
    stages = [s for s in (results.get("stages") or {}).values() if s.get("checkpoint")]
    if not stages:
        raise ConfigError(f"{run_dir / 'results.json'}: no stage finished with a checkpoint")
    return run_dir / stages[-1]["checkpoint"]


def image_miou(predict: Any, loader: Any, kwargs: dict[str, Any]) -> float:
    """mIoU against ground truth over every unit of ``loader`` (image batches) of ``predict(batch)``."""
    import torch

    from .evaluation import split_metrics

    with torch.no_grad():
        return split_metrics([(predict(batch), batch["targets"]) for batch in loader], **kwargs)["miou"]


def card_step(run_dir: Path, ckpt: Path, out: Path) -> list[dict[str, Any]]:
    """Load the final student and its teacher; the latency card on the first test batch (see module docs)."""
    from lit_experiments.deploy.build import load_study

    from .deploy import latency_card

    model, dm, _ = load_study([str(run_dir / "config.yaml")], str(ckpt))
    dm.text_tower = model.student.text_encoder  # the loaders serve the student's ids (no trainer attaches it)
    dm.setup("test")
    loaders = dm.test_dataloader()
    images = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    batch = next(iter(images))
    calibrated = model.calibration.postprocess_kwargs()

    def metric(kwargs: dict[str, Any]) -> Any:
        return lambda predict: image_miou(predict, images, kwargs)

    metrics = {"teacher": metric(model.teacher_calibration.postprocess_kwargs()), "student_fp32": metric(calibrated),
               "student_int8_weight_only": metric(calibrated), "student_onnx": metric(calibrated)}
    return latency_card(dm.frozen, model, batch, out, metrics=metrics, metric_name="test/miou")


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4f}"


def print_headline(results: dict[str, Any]) -> None:
    """The headline beside its floors and references (F49), the prompt numbers together, the teacher per family."""
    test, refs = results.get("test") or {}, results.get("references") or {}
    print("\n== distill demo: student vs teacher (test units of held-out ShapesWorld; each at its validation "
          "calibration)")
    for key in HEADLINE_SHOWN:
        if key not in test:
            continue
        rows = "; ".join(f"{r['kind']} {r['name']} {_fmt(r['value'])}" for r in refs.get(key, []))
        print(f"  {key:<38} {test[key]:.4f}" + (f"   [{rows}]" if rows else ""))
    for who, pre in (("student", ""), ("teacher", "teacher_")):
        cr, ps = test.get(f"test/{pre}concept_responsiveness"), test.get(f"test/{pre}paraphrase_stability")
        if cr is not None and ps is not None:
            print(f"  {who}: concept responsiveness {cr:.4f} with paraphrase stability {ps:.4f} (a prompt-blind "
                  "model: 0 and 1.0)")
    for key in OTHER_SHOWN:
        if key in test:
            print(f"  {key:<38} {test[key]:.4f}")
    fams = (results.get("teacher_families") or {}).get("families") or {}
    if fams:
        parts = [f"{name} {v.get('miou_pos', v.get('miou')):.3f}{'' if v['trained_on'] else ' (not trained on)'}"
                 for name, v in fams.items()]
        print("  teacher per prompt family before distillation (validation, at 0.5): " + ", ".join(parts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lit-exp distill-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="the demo config (configs/distill/demo.yaml)")
    p.add_argument("--run_dir", default="runs/distill/demo", help="a new folder for this run")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training (default 1: 2 busy cores)")
    p.add_argument("--no-card", action="store_true", help="skip the latency card")
    p.add_argument("--seed_everything", type=int, default=None,
                   help="the run's seed (default: the config's seed_everything); drives every random choice (F50)")
    args, extra = p.parse_known_args(argv)
    if args.seed_everything is not None:
        import lightning as L

        L.seed_everything(args.seed_everything, verbose=False)
        extra = [*extra, "--seed_everything", str(args.seed_everything)]
    from lit_experiments.core.configs import composition

    config, run_dir = Path(args.config), Path(args.run_dir)
    if not config.is_file():
        raise ConfigError(f"-c {config}: no such config file")
    if (run_dir / "results.json").exists():
        raise ConfigError(f"--run_dir {run_dir} already holds a run (results.json); give a new folder")
    start = time.perf_counter()
    files = [a for f in composition(config) for a in ("-c", str(f))]
    cmd = [sys.executable, "-m", "lit_experiments", "curriculum", *files, f"--trainer.run_dir={run_dir}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    print(f"distill demo: {' '.join(cmd[2:])}", flush=True)
    if subprocess.run(cmd, env=env).returncode != 0:
        print(f"distill demo: the curriculum failed; see {run_dir / 'results.json'}", file=sys.stderr)
        return 1
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text())
    card: list[dict[str, Any]] = []
    if not args.no_card:
        import torch

        torch.set_num_threads(args.threads)
        card = card_step(run_dir, final_checkpoint(run_dir, results), run_dir / "deploy")
        results = json.loads(results_path.read_text())
        results["latency_card"] = card
        from lit_experiments.core.jsonfile import write_json

        write_json(results_path, results)
    print_headline(results)
    quality = (results.get("teacher") or {}).get("standin_quality") or {}
    if quality:
        print(f"  stand-in teacher on its own held-out world: miou_pos {quality.get('miou_pos', float('nan')):.4f}, "
              f"presence_f1 {quality.get('presence_f1', float('nan')):.4f}")
    for row in card:
        print(f"  card {row['model']:<26} test/miou {row.get('metric') or float('nan'):.4f}  "
              f"{row['latency_ms']:.3f} ms/unit  {row['size_mb']:.2f} MB  ({row.get('threads')})")
    print(f"distill demo: {time.perf_counter() - start:.0f} s -> {results_path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
