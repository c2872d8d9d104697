"""LitCLI: LightningCLI with a ``curriculum`` subcommand, results.json for every run, and evaluation of any checkpoint.

Imported by :mod:`lit_experiments.cli` only when a Lightning subcommand runs (it imports torch and lightning).

* ``fit`` / ``curriculum`` write into ``trainer.run_dir``.
* ``validate`` / ``test`` / ``predict`` need ``--ckpt_path`` (a stage's ``final.ckpt`` or a Lightning
  ``last.ckpt``; ``init`` evaluates the untrained model on purpose), accept curriculum configs (``stages``,
  ``only``, ``resume``, ``test_after`` are read for the stage, not run), build lazy parts before loading, and
  write into their own ``<run_dir>/eval/<subcommand>-<timestamp>/``: the fit's logs are never touched.
* Parsers raise instead of printing a usage dump and take no abbreviated options.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden

from .checkpoints import NO_CHECKPOINT, CheckpointInfo, load_weights_for_eval
from .configs import compose_config_args
from .curriculum import apply_data_overrides
from .errors import ConfigError, LitExpError, clean_parser_message
from .predict import PredictionWriter
from .results import RunResults, error_line, format_metric_table, format_test_table, skipped_samples, to_float_dict
from .rundir import resolve_run_dir
from .seeding import mark_run_seed
from .specs import StageSpec
from .study import StudyModule
from .trainer import LitTrainer, default_run_dir

EVAL_SUBCOMMANDS = ("validate", "test", "predict")
EVAL_DIR_ENV = "LIT_EXP_EVAL_DIR"
#: keys of a curriculum config that validate / test / predict accept (and use only to pick the stage)
CURRICULUM_KEYS = {"stages": list[StageSpec] | None, "only": str | None, "resume": str | None, "test_after": bool}


def progress_bar_wanted(argv: list[str], env: dict[str, str] | None = None, tty: bool | None = None) -> bool | None:
    """On where a terminal is attached, off in CI / non-TTY logs; ``None``: the command line decides.

    An explicit ``--trainer.enable_progress_bar X`` on the command line always wins (returns ``None``).
    """
    if any(a.split("=", 1)[0] == "--trainer.enable_progress_bar" for a in argv):
        return None
    env = os.environ if env is None else env
    tty = sys.stderr.isatty() if tty is None else tty
    return bool(tty) and not env.get("CI")


def _class_keys(path: str) -> list[str]:
    """The constructor arguments of the class at dotted ``path`` (``[]`` when it cannot be imported)."""
    import importlib
    import inspect

    module, _, name = path.rpartition(".")
    try:
        target = getattr(importlib.import_module(module), name)
        params = inspect.signature(target).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return []
    return [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _where_key(key: str, sources: list[str]) -> list[str]:
    """``file:line`` of each config file line that sets ``key`` (block or flow style)."""
    pattern = re.compile(rf"(^|[{{,\s]){re.escape(key)}\s*:")
    found = []
    for path in sources:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        found += [f"{path}:{i}" for i, line in enumerate(lines, 1) if pattern.search(line.split("#")[0])]
    return found


def _nested_key_hint(message: str, sources: list[str]) -> str:
    """For an unknown key inside a part (``Option 'hiden' is not accepted``) or a group (``Group 'trainer' does
    not accept option 'max_epoch'``): the nearest accepted key and the file and line that set it."""
    part = re.search(r"Option '([\w.]+)' is not accepted", message)
    group = re.search(r"Group '([\w.]+)' does not accept option '([\w.]+)'", message)
    if part:
        key = part.group(1)
        cls = re.search(r"'class_path': '([\w.]+)'", message)
        accepted = _class_keys(cls.group(1)) if cls else []
    elif group:
        key = group.group(2).rsplit(".", 1)[-1]
        if group.group(1) == "trainer":
            from .trainer import LitTrainer

            accepted = _class_keys("lightning.Trainer") + _class_keys(f"{LitTrainer.__module__}.LitTrainer")
        else:
            accepted = []
    else:
        return ""
    hint = ""
    close = difflib.get_close_matches(key, sorted(set(accepted)), n=2, cutoff=0.6)
    if close:
        hint += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    where = _where_key(key, sources)
    if where:
        hint += f" (set in {', '.join(where)})"
    return hint


def explain_parse_error(message: str, argv: list[str], parsers: dict[str, Any], sources: list[str] | None = None
                        ) -> str:
    """jsonargparse's message, shortened, with the key path and a close option name when one exists; for an unknown
    key inside a config file, the nearest accepted key and the file and line that set it."""
    sub = next((a for a in argv if a in parsers), None)
    lines = clean_parser_message(message)
    keys = [m.group(1) for line in lines if (m := re.match(r'Parser key "([^"]+)":?$', line))]
    rest = [line for line in lines if not re.match(r'(Parser key "[^"]+":?|Errors:|Problem with given class_path'
                                                   r"|Does not validate against any of the Union subtypes)", line)]
    text = "; ".join(rest) or message
    text = re.sub(r"; Given value: .*$", "", text)  # the whole composed part, hundreds of characters
    text += _nested_key_hint(message, sources or [])
    if len(keys) > 1:  # model -> (class_path) -> hidden: the full dotted key
        text = f"{keys[0]}.init_args.{'.'.join(keys[1:])}: {text}"
    elif keys:
        text = f"{keys[0]}: {text}"
    unknown = re.findall(r"(?:unrecognized arguments: |does not accept option ')(-*[\w.]+)", message)
    if sub is not None and unknown:
        options = [o for o in parsers[sub]._option_string_actions if o.startswith("--")]
        name = unknown[0] if unknown[0].startswith("--") else f"--{unknown[0]}"
        close = difflib.get_close_matches(name, options, n=2, cutoff=0.8)
        if close:
            text += f"; did you mean {' or '.join(close)}?"
        if sub == "fit" and name == "--stages":
            text += "; a config with `stages:` runs with `lit-exp curriculum`"
    return text


class LitCLI(LightningCLI):
    """LightningCLI with a `curriculum` subcommand, results.json for every run and checkpoint evaluation."""

    def __init__(self, *args: Any, argv: list[str] | None = None, **kwargs: Any) -> None:
        self._argv = list(sys.argv[1:] if argv is None else argv)
        self._eval_ckpt: str | None = None
        self._eval_dir: Path | None = None
        self._loaded: CheckpointInfo | None = None
        self._predictions: PredictionWriter | None = None
        self._config_sources: list[str] = []  # the -c files and their bases, in the order composed
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = dict(LightningCLI.subcommands())
        commands["curriculum"] = {"model", "datamodule"}
        return commands

    # ---------------------------------------------------------------- parsers
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("exit_on_error", False)  # errors are raised and printed by cli.main in one block
        kwargs.setdefault("allow_abbrev", False)  # --trainer.max_epoch is an error, not max_epochs
        return super().init_parser(**kwargs)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in EVAL_SUBCOMMANDS:  # curriculum configs are valid here (not passed to the Trainer)
            for key, kind in CURRICULUM_KEYS.items():
                parser.add_argument(f"--{key}", type=kind, default=False if kind is bool else None,
                                    help=f"from a curriculum config; {subcommand} only reads the stage list")
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """The ``-c`` files composed by the one rule (core/configs.merge, F48) and parsed as one config."""
        try:
            if isinstance(args, dict) or (args is not None and not isinstance(args, (list, tuple))):
                self.config = parser.parse_object(args)
            else:
                composed, files, bases = compose_config_args(list(sys.argv[1:] if args is None else args))
                self._config_sources = [os.path.abspath(f) for f in files]
                if bases and rank_zero_only.rank == 0:
                    print("composing " + " + ".join(str(b) for b in bases) + " with the given config(s)",
                          file=sys.stderr, flush=True)
                self.config = parser.parse_args(composed)
        except ArgumentError as err:
            raise ConfigError(explain_parse_error(str(err), self._argv, getattr(self, "_subcommand_parsers", {}),
                                                  self._config_sources)) from err
        sub = self.config.get("subcommand")
        if sub in EVAL_SUBCOMMANDS:
            # the checkpoint is loaded by us after the lazy build, never by Lightning (nor its hparams parsed)
            self._eval_ckpt = self.config[sub].get("ckpt_path")
            self.config[sub]["ckpt_path"] = None

    def before_instantiate_classes(self) -> None:
        # seed_everything just ran: every run_seed() of this run keys on its seed (F50; in-process sweeps included)
        mark_run_seed(int(os.environ.get("PL_GLOBAL_SEED", "0")))
        sub = self.subcommand
        if sub == "fit":  # a run dir that holds a run is never reused silently (suffix or refuse)
            cfg = self.config[sub]
            cfg.trainer.run_dir = str(resolve_run_dir(cfg.trainer.get("run_dir") or default_run_dir()))
        if sub not in EVAL_SUBCOMMANDS:
            return
        if not self._eval_ckpt:
            raise ConfigError(
                f"`lit-exp {sub}` needs --ckpt_path: a stage's <run_dir>/stages/NN_<stage>/final.ckpt, a "
                f"Lightning <run_dir>/.../checkpoints/last.ckpt, or `--ckpt_path {NO_CHECKPOINT}` to score the "
                "untrained model on purpose")
        self._eval_dir = self._make_eval_dir(sub)

    def _make_eval_dir(self, sub: str) -> Path:
        shared = os.environ.get(EVAL_DIR_ENV)  # DDP ranks started by Lightning reuse rank zero's choice
        if shared and rank_zero_only.rank != 0:
            return Path(shared)
        from .checkpoints import find_run_dir

        base = find_run_dir(Path(self._eval_ckpt)) if self._eval_ckpt != NO_CHECKPOINT else None
        if base is None:
            configured = self.config[sub].trainer.get("run_dir")
            base = Path(configured) if configured else default_run_dir()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, n = base / "eval" / f"{sub}-{stamp}", 1
        while path.exists():
            n += 1
            path = base / "eval" / f"{sub}-{stamp}-{n}"
        os.environ[EVAL_DIR_ENV] = str(path)
        return path

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        bar = progress_bar_wanted(self._argv)
        if bar is not None:
            kwargs["enable_progress_bar"] = bar
        if self._eval_dir is not None:
            kwargs["run_dir"] = str(self._eval_dir)
            kwargs["default_root_dir"] = str(self._eval_dir)
        return super().instantiate_trainer(**kwargs)

    # ---------------------------------------------------------------- helpers
    def _config_files(self) -> list[str]:
        """The config files the run was composed from (bases first), absolute."""
        return list(self._config_sources)

    def _results(self) -> RunResults:
        results = RunResults(self.trainer.run_dir)
        results.init_run(self.trainer.run_dir.name, type(self.model).__name__, self._config_files())
        if self._loaded is not None or self._eval_ckpt == NO_CHECKPOINT:
            info = self._loaded
            results.data["evaluated"] = {
                "subcommand": self.subcommand, "checkpoint": str(info.path) if info else NO_CHECKPOINT,
                "kind": info.kind if info else None, "run_dir": str(info.run_dir) if info and info.run_dir else None,
                "stage": self.model.stage.name}
        return results

    def _finish(self, results: RunResults) -> None:
        for section, values in getattr(self.model, "extra_results", {}).items():
            results.merge(section, values)
        split_info = getattr(self.datamodule, "split_info", None)
        if split_info:
            results.merge("splits", split_info)
        skipped = skipped_samples(self.datamodule)
        if skipped is not None:  # on_bad_sample: skip is counted, never silent
            results.merge("data", skipped)
        results.set_headline(list(getattr(self.model, "headline_metrics", [])))
        path = results.save()
        if self.trainer.is_global_zero:
            if self.subcommand == "test":  # Lightning's own table is off (verbose=False): this short one instead
                table = format_test_table(results.data, path)
                if table:
                    print(table, flush=True)
            print(f"results.json: {path}")

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        """validate / test print the workbench's short metric table, not Lightning's table of every metric."""
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if subcommand in ("validate", "test"):
            kwargs["verbose"] = False
        return kwargs

    def _stage_for_eval(self, stages: list[StageSpec] | None, from_path: str | None) -> None:
        """Put the model (and datamodule) in the stage the checkpoint was written in (else the last one)."""
        if not stages or not isinstance(self.model, StudyModule):
            return
        names = [s.name for s in stages]
        index = names.index(from_path) if from_path in names else len(stages) - 1
        for stage in stages[: index + 1]:
            apply_data_overrides(self.datamodule, stage)
        self.model.set_stage(stages[index], in_curriculum=False)

    def _prepare_eval(self, sub: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config_init[sub]
        stages = cfg.get("stages")
        ckpt = self._eval_ckpt
        if ckpt == NO_CHECKPOINT:
            self._stage_for_eval(stages, None)
        else:
            self._loaded = load_weights_for_eval(self.model, self.datamodule, ckpt, kwargs.get("weights_only"),
                                                 prepare=lambda stage: self._stage_for_eval(stages, stage))
        if self.trainer.is_global_zero:
            stage = f" (stage {self.model.stage.name!r})" if stages else ""
            print(f"{sub}: weights {ckpt}{stage} -> {self._eval_dir}")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("ckpt_path", "weights_only", *CURRICULUM_KEYS)}
        return kwargs

    # ------------------------------------------------- evaluation subcommands
    def validate(self, model: L.LightningModule, datamodule: Any = None, **kwargs: Any) -> Any:
        kwargs = self._prepare_eval("validate", kwargs)
        return self.trainer.validate(model, datamodule=datamodule, ckpt_path=None, **kwargs)

    def test(self, model: L.LightningModule, datamodule: Any = None, **kwargs: Any) -> Any:
        kwargs = self._prepare_eval("test", kwargs)
        return self.trainer.test(model, datamodule=datamodule, ckpt_path=None, **kwargs)

    def predict(self, model: L.LightningModule, datamodule: Any = None, **kwargs: Any) -> Any:
        kwargs = self._prepare_eval("predict", kwargs)
        self._predictions = PredictionWriter(self._eval_dir)
        self.trainer.callbacks.append(self._predictions)
        kwargs["return_predictions"] = False  # the writer keeps them; no second copy in memory
        try:
            return self.trainer.predict(model, datamodule=datamodule, ckpt_path=None, **kwargs)
        except (TypeError, AttributeError) as err:
            if is_overridden("predict_step", model, L.LightningModule):
                raise
            raise LitExpError(f"{type(model).__name__} has no predict_step and forward(batch) failed on a test "
                              f"batch ({type(err).__name__}: {err}); define predict_step(batch, batch_idx) "
                              "returning the study's outputs (a tensor, dict or dataclass)") from err

    # ------------------------------------------------------------------ hooks
    def before_curriculum(self) -> None:
        # the resolved config goes to the run; run_curriculum saves it once the run dir is settled (F34)
        cfg = self.config[self.subcommand]
        self.trainer.set_run_config(self._parser(self.subcommand).dump(cfg, skip_none=False), self._config_files())

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a failed or interrupted ``fit`` / ``validate`` / ``test`` / ``predict`` still leaves its record:
        results.json with ``status`` (``failed`` / ``interrupted``) and the error's first line (the curriculum
        runner keeps its own)."""
        try:
            super()._run_subcommand(subcommand)
        except BaseException as exc:
            if subcommand != "curriculum":
                self._record_failure(subcommand, exc)
            raise

    def _record_failure(self, subcommand: str, exc: BaseException) -> None:
        # Lightning answers Ctrl-C with SystemExit(1) and an interrupted trainer (it marks any failure interrupted)
        interrupted = isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, SystemExit) and bool(getattr(self.trainer, "interrupted", False)))
        if isinstance(exc, SystemExit) and not interrupted and exc.code in (0, None):
            return
        if not Path(self.trainer.run_dir).is_dir():  # refused before anything was written: nothing to record
            return
        try:
            results = self._results()
            status = "interrupted" if interrupted else "failed"
            results.data.update(status=status, subcommand=subcommand,
                                error="KeyboardInterrupt" if interrupted else error_line(exc))
            metrics = to_float_dict(self.trainer.callback_metrics)
            if subcommand == "fit":
                results.set_stage("fit", {"status": status, "metrics": metrics,
                                          "epochs": self.trainer.current_epoch, "steps": self.trainer.global_step})
            path = results.save()
            if self.trainer.is_global_zero:
                print(f"results.json ({status}): {path}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - the record is best effort; the run's own error is what the user sees
            pass

    def _print_metrics(self, title: str, metrics: dict[str, float], keep: Any = None) -> None:
        shown = {k: v for k, v in metrics.items() if keep is None or keep(k)}
        table = format_metric_table(title, shown)
        if table and self.trainer.is_global_zero:
            print(table, flush=True)

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.global_step == 0 and not trainer.interrupted:  # issue 25: a fit that trains nothing never ends done
            raise LitExpError(f"fit ran 0 optimizer steps (max_steps={trainer.max_steps}, max_epochs="
                              f"{trainer.max_epochs}, limit_train_batches={trainer.limit_train_batches}): nothing was "
                              "trained")
        results = self._results()
        metrics = to_float_dict(self.trainer.callback_metrics)
        results.data["status"] = "done"
        results.set_stage("fit", {"status": "done", "metrics": metrics,
                                  "epochs": self.trainer.current_epoch, "steps": self.trainer.global_step})
        results.merge("final", metrics)
        self._print_metrics(f"fit metrics ({self.trainer.run_dir.name}, last epoch)", metrics,
                            lambda k: "val/" in k or k.endswith("loss") or k.endswith("loss_epoch"))
        self._finish(results)

    def after_validate(self) -> None:
        results = self._results()
        metrics = to_float_dict(self.trainer.callback_metrics)
        results.data["status"] = "done"
        results.merge("validate", metrics)
        self._print_metrics(f"validate metrics ({results.data.get('run_name', 'run')})", metrics)
        self._finish(results)

    def after_test(self) -> None:
        results = self._results()
        results.data["status"] = "done"
        results.merge("test", to_float_dict(self.trainer.callback_metrics))
        self._finish(results)

    def after_predict(self) -> None:
        results = self._results()
        written = self._predictions.written if self._predictions is not None else []
        results.merge("predict", {"files": [p.name for p in written]})
        self._finish(results)
        if self.trainer.is_global_zero:
            for path in written:
                print(f"predictions: {path}")

    def after_curriculum(self) -> None:
        if self.trainer.is_global_zero:
            print(f"results.json: {Path(self.trainer.run_dir) / 'results.json'}")


def build_cli(args: list[str] | None = None, run: bool = True, description: str | None = None) -> LitCLI:
    """The ``lit-exp`` LightningCLI over every StudyModule / LightningDataModule (``args=None``: ``sys.argv``)."""
    return LitCLI(
        StudyModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_class=LitTrainer,
        auto_configure_optimizers=False,  # optimizers are built per fit by the module (F32)
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"description": description} if description else None,
        args=args,
        run=run,
        argv=args,
    )


def run_command(args: list[str], from_argv: bool = False, description: str | None = None) -> None:
    """One Lightning subcommand (``fit``, ``curriculum``, ``test``, ...) in this process.

    Every config file and its ``# base:`` files are checked first, so a YAML error names its file and line
    (jsonargparse says ``<unicode string>``); then the files are composed by the one rule (F48) and run.
    ``from_argv``: LightningCLI reads ``sys.argv`` itself (the console script)."""
    from .configs import composition_of, config_args
    from .errors import check_yaml_file

    given = [value for _, _, value in config_args(args)]
    for path in given:
        check_yaml_file(path)
    for path in composition_of(given):
        check_yaml_file(path)
    build_cli(None if from_argv else args, description=description)
