"""The mutants of ``bench/mutants.py`` (issue 26): each row puts one known bug back into the product code.

A row is ``Mutant(key, id, file, pattern, replacement, note)``: ``pattern`` must occur exactly once in ``file``
(``tests/test_mutants_catalogue.py`` checks it in ``make test``, so a refactor that moves the code makes the catalogue
fail loudly); ``replacement`` is the bug as the seed log / LESSONS.md describes it. ``id`` is the docs/lessons.md row
whose named tests must catch it. ``pending=True``: the study is being refactored; the row is listed, not run.
"""

from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
    key: str
    id: str
    file: str
    pattern: str
    replacement: str
    note: str
    pending: bool = False


CORE = "lit_experiments/core"
METRICS = "lit_experiments/metrics"
EXP = "lit_experiments/experiments"
DEPLOY = "lit_experiments/deploy"
SLOTS = "lit_experiments/studies/slots"
SATI = "lit_experiments/studies/satipatthana"
ML = "lit_experiments/studies/multilabel"
RET = "lit_experiments/studies/retrieval"
DIST = "lit_experiments/studies/distill"

MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------------ slots (seed 000)
    Mutant("F01-slots-target-from-projection", "F01", f"{SLOTS}/encoders.py",
           "target = feats.detach()  # F01",
           "target = (self.projection(feats) if self.projection is not None else feats).detach()  # F01",
           "the reconstruction target is the trainable projection's output (under no_grad, detached)"),
    Mutant("F01-target-grad-check", "F01", f"{CORE}/health.py",
           "if isinstance(target, torch.Tensor) and target.requires_grad:",
           "if False:",
           "the guard no longer looks at a target's requires_grad"),
    Mutant("F05-pred-nearest", "F05", f"{METRICS}/ari.py",
           'mode="bilinear", align_corners=False)',
           'mode="nearest")',
           "soft masks upsampled nearest instead of bilinear"),
    Mutant("F05-gt-bilinear", "F05", f"{METRICS}/ari.py",
           'size=size, mode="nearest-exact")',
           'size=size, mode="bilinear", align_corners=False)',
           "GT ids resized bilinearly (ids blend into other ids)"),
    Mutant("F05-fg-keeps-background", "F05", f"{METRICS}/ari.py",
           "c = c * (t_ids != 0)",
           "c = c * (t_ids >= 0)",
           "FG-ARI keeps the background id 0"),
    # ------------------------------------------------------------------ satipatthana (seed 001)
    Mutant("F07-stability-from-detached-log", "F07", f"{SATI}/components/sati.py",
           "stability_pair=(s, prev)",
           "stability_pair=(s.detach(), prev.detach())",
           "the stability loss reads detached copies of the states (the trajectory log's)"),
    Mutant("F09-no-dry-run", "F09", f"{CORE}/lazy.py",
           "        lazy_build(pl_module, batch)\n",
           "        pass\n",
           "LazyBuild skips the dry run: lazy parts do not exist when the stage freezes / builds its optimizer"),
    Mutant("F09-dry-run-misses-the-baseline", "F09", f"{SATI}/module.py",
           '        if self.baseline is not None:\n            self.baseline(batch["x"])\n',
           "        pass\n",
           "the dry run does not reach the lazily built baseline"),
    Mutant("F09-ckpt-load-before-build", "F09", f"{CORE}/checkpoints.py",
           "lazy_build(model, datamodule.example_batch())  # lazily built parts",
           "None  # lazily built parts",
           "a checkpoint is loaded before the lazy parts exist"),
    Mutant("F12-one-lr-for-all-stages", "F12", f"{CORE}/study.py",
           "        spec = self.stage.optimizer\n",
           "        spec = self.default_optimizer\n",
           "every stage trains with the plain-fit optimizer and learning rate"),
    # ------------------------------------------------------------------ retrieval metrics (seed 002)
    Mutant("F19-std-unnormalised", "F19", f"{METRICS}/embedding.py",
           "z = F.normalize(emb.detach().double(), dim=1)",
           "z = emb.detach().double()",
           "embedding std measured before L2 normalisation"),
    Mutant("F21-recall-is-hit-rate", "F21", f"{METRICS}/retrieval.py",
           'out[f"recall@{k}"] = (hv[:, j] / pv).mean()',
           'out[f"recall@{k}"] = (hv[:, j] > 0).double().mean()',
           "Recall@K computed as HitRate@K"),
    # ------------------------------------------------------------------ multilabel (seed 004)
    Mutant("F28-no-hash-switch-ignored", "F28", f"{ML}/heads.py",
           "self.hash_bits = None if hash_bits is None else int(hash_bits)",
           "self.hash_bits = 64 if hash_bits is None else int(hash_bits)",
           "hash_bits: null (the no-hash ablation) silently keeps the 64-bit hash layer"),
    Mutant("F29-epochs-ignored", "F29", f"{EXP}/report.py",
           '"trainer.wandb")',
           '"trainer.wandb", "trainer.max_epochs")',
           "the report ignores a max_epochs difference between compared runs (30 vs 20 epochs)"),
    Mutant("F30-auc-one-positive", "F30", f"{METRICS}/multilabel.py",
           "both = has_pos & (n_pos < n)",
           "both = (n_pos > 1) & (n_pos < n)",
           "macro AUC skips classes with exactly one positive"),
    Mutant("F30-auc-undefined-as-zero", "F30", f"{METRICS}/multilabel.py",
           '"auc_macro": auc[both].mean() if both.any() else nan,',
           '"auc_macro": auc.nan_to_num(0.0).mean(),',
           "classes without positives or negatives scored 0 in the macro AUC (torchmetrics)"),
    Mutant("F31-fold-redrawn-from-datamodule-seed", "F31", f"{CORE}/folds.py",
           '    fold = data["folds"][index]\n',
           '    fold = make_folds(n, labels, data["n_folds"], int(getattr(datamodule, "seed", None) or 0))[index]\n',
           "each fold run re-draws its fold from the datamodule's seed instead of reading folds.json"),
    Mutant("F31-cv-tests-the-worst-fold", "F31", f"{EXP}/cv.py",
           'chosen = [(max if mode == "max" else min)(v, key=lambda p: p[0])[1] for v in scored.values()]',
           'chosen = [(min if mode == "max" else max)(v, key=lambda p: p[0])[1] for v in scored.values()]',
           "cv --test best scores the wrong fold's model (the worst by --select)"),
    Mutant("F41-test-tunes-on-test-labels", "F41", f"{ML}/evaluation.py",
           'metrics = module.stored_policy().evaluate(rows["probs"], rows["targets"])',
           'metrics = ThresholdPolicy().fit(rows["probs"], rows["targets"]).evaluate(rows["probs"], rows["targets"])',
           "the multilabel test step tunes its thresholds on the test labels"),
    Mutant("F43-export-ignores-second-batch", "F43", f"{DEPLOY}/export.py",
           'worst = max(worst, other["max_abs_err"])',
           "worst = worst",
           "the export check ignores the second batch size"),
    Mutant("F43-quantize-scores-float-model", "F43", f"{DEPLOY}/quantize.py",
           'metrics = run_test(q, dm, out / "runs" / mode, limit)',
           'metrics = run_test(model, dm, out / "runs" / mode, limit)',
           "quantize scores every mode on the unquantised model"),
    Mutant("F44-multilabel-rows-not-gathered", "F44", f"{ML}/module.py",
           'return GatheredRows((*names, "index"), dtypes=dtypes, order_by="index")',
           'return GatheredRows((*names, "index"), dtypes=dtypes, order_by="index", sync_on_compute=False)',
           "multilabel val / test rows not gathered across ranks"),
    Mutant("F44-satipatthana-rows-not-gathered", "F44", f"{SATI}/evaluation.py",
           'GatheredRows(columns, dtypes={"index": torch.long}, order_by="index")',
           'GatheredRows(columns, dtypes={"index": torch.long}, order_by="index", sync_on_compute=False)',
           "satipatthana test rows not gathered across ranks"),
    Mutant("F44-gathered-rows-not-reduced", "F44", f"{METRICS}/gathered.py",
           'self.add_state(name, default=[], dist_reduce_fx="cat")',
           "self.add_state(name, default=[], dist_reduce_fx=None)",
           "the shared GatheredRows keeps per-rank lists"),
    Mutant("F45-folds-fingerprint-not-checked", "F45", f"{EXP}/report_stats.py",
           "if b.fingerprint != r.fingerprint:",
           "if False:",
           "the report pairs runs whose folds files differ"),
    Mutant("F45-report-std-ddof0", "F45", f"{EXP}/report_stats.py",
           "float(arr.std(ddof=1)) if len(arr) > 1",
           "float(arr.std(ddof=0)) if len(arr) > 1",
           "report std with ddof 0"),
    Mutant("F45-cv-std-ddof0", "F45", f"{EXP}/cv.py",
           '"std": float(arr.std(ddof=1))',
           '"std": float(arr.std(ddof=0))',
           "cv.json std with ddof 0"),
    Mutant("F45-pairs-off-by-one-fold", "F45", f"{EXP}/report_stats.py",
           "by_key.setdefault((r.seed, r.fold), r)",
           "by_key.setdefault((r.seed, r.fold if r.fold is None else r.fold + 1), r)",
           "the report pairs fold i of the variant with fold i-1 of the baseline"),
    Mutant("F50-sweep-one-seed-for-all", "F50", f"{EXP}/sweep.py",
           '"--seed_everything", str(run.seed)]',
           '"--seed_everything", str(plan.seeds[0])]',
           "every sweep run trains with the first seed"),
    Mutant("F51-folds-as-independent", "F51", f"{EXP}/report_stats.py",
           "return 1.0 / n_pairs + n_test / n_train",
           "return 1.0 / n_pairs",
           "the fold test treats folds as independent samples (plain paired t)"),
    Mutant("F54-cv-failed-test-exits-0", "F54", f"{EXP}/cv.py",
           "        return 1\n    return 0 if all(",
           "        return 0\n    return 0 if all(",
           "a failed requested cv test exits 0"),
    # ------------------------------------------------------------------ pending: retrieval / distill refactors
    Mutant("F20-fastap-width-unnormalised", "F20", f"{RET}/losses.py", "", "",
           "kernel width not equal to 4/bins without normalising each pair", pending=True),
    Mutant("F22-one-tokenizer-for-both", "F22", f"{DIST}/prompts.py", "", "",
           "teacher and student fed the same token ids", pending=True),
    Mutant("F23-tokenized-text-not-sampled", "F23", f"{DIST}/prompts.py", "", "",
           "the tokenized text is not the sampled prompt", pending=True),
    Mutant("F24-four-generic-prompts", "F24", f"{DIST}/prompts.py", "", "",
           "prompts only from 4 generic strings", pending=True),
    Mutant("F25-uncapped-matcher", "F25", f"{DIST}/matching.py", "", "",
           "the matcher pairs every teacher query", pending=True),
    Mutant("F26-undefined-metric-as-zero", "F26", f"{DIST}/evaluation.py", "", "",
           "an undefined distill metric (NaN) logged as 0.0", pending=True),
    Mutant("F27-clip-prompts-tiled", "F27", f"{DIST}/module.py", "", "",
           "clip prompt ids tiled across the batch", pending=True),
    Mutant("F39-no-positive-queries-averaged", "F39", f"{RET}/losses.py", "", "",
           "queries without a positive averaged in", pending=True),
    Mutant("F40-sampler-rank-0-of-1", "F40", f"{RET}/datamodule.py", "", "",
           "the retrieval sampler built as rank 0 of 1", pending=True),
    Mutant("F42-calibration-on-teacher-records", "F42", f"{DIST}/evaluation.py", "", "",
           "the student's calibration fitted on the teacher's validation records", pending=True),
    Mutant("F46-paraphrase-group-crosses-concepts", "F46", f"{DIST}/evaluation.py", "", "",
           "test-time paraphrase groups that include another concept", pending=True),
    Mutant("F19-simsiam-no-stop-gradient", "F19", f"{RET}/module.py", "", "",
           "the SimSiam target branch keeps its gradient", pending=True),
]
