"""`lit-exp`: LightningCLI with fit / validate / test / predict / curriculum, plus plain tools.

    lit-exp fit -c configs/X/run.yaml [-c more.yaml] [--trainer.max_epochs 3]
    lit-exp curriculum -c configs/satipatthana/demo.yaml [--only adapter,samatha] [--resume runs/...]
    lit-exp data shapes --out DIR --format movi        (data tools)
    lit-exp slots-analyze --backbone ...               (backbone analysis of the slots study)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from .core.results import RunResults, to_float_dict
from .core.study import StudyModule
from .core.trainer import LitTrainer

#: non-Lightning commands: name -> module with ``main(argv)``
TOOLS = {
    "data": "lit_experiments.data.tools",
    "slots-analyze": "lit_experiments.studies.slots.analyze",
    "curves": "lit_experiments.core.curves",
    "demo": "lit_experiments.demo",
}

DESCRIPTION = ("lit_experiments: vision studies as LightningModule + LightningDataModule pairs, run from YAML. "
               "Other commands: " + ", ".join(f"`lit-exp {t}`" for t in TOOLS) + ".")


class LitCLI(LightningCLI):
    """LightningCLI with a `curriculum` subcommand and results.json for every run."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = dict(LightningCLI.subcommands())
        commands["curriculum"] = {"model", "datamodule"}
        return commands

    # ---------------------------------------------------------------- helpers
    def _config_files(self) -> list[str]:
        cfg = self.config.get(str(self.subcommand), self.config)
        files = cfg.get("config") or []
        return [str(getattr(f, "absolute", f)) if not isinstance(f, str) else f for f in files]

    def _results(self) -> RunResults:
        results = RunResults(self.trainer.run_dir)
        results.init_run(self.trainer.run_dir.name, type(self.model).__name__, self._config_files())
        return results

    def _finish(self, results: RunResults) -> None:
        for section, values in getattr(self.model, "extra_results", {}).items():
            results.merge(section, values)
        results.set_headline(list(getattr(self.model, "headline_metrics", [])))
        path = results.save()
        rank_zero_info(f"results: {path}")
        if self.trainer.is_global_zero:
            print(f"results.json: {path}")

    # ------------------------------------------------------------------ hooks
    def before_curriculum(self) -> None:
        # the resolved config, saved once per run (F34); stage trainers get no SaveConfigCallback
        cfg = self.config[self.subcommand]
        run_dir = Path(cfg.get("resume") or self.trainer.run_dir)
        self.trainer.config_files = self._config_files()
        if self.trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._parser(self.subcommand).save(cfg, run_dir / "config.yaml", skip_none=False, overwrite=True,
                                               multifile=False)

    def after_fit(self) -> None:
        results = self._results()
        results.set_stage("fit", {"status": "done", "metrics": to_float_dict(self.trainer.callback_metrics),
                                  "epochs": self.trainer.current_epoch, "steps": self.trainer.global_step})
        results.merge("final", to_float_dict(self.trainer.callback_metrics))
        self._finish(results)

    def after_validate(self) -> None:
        results = self._results()
        results.merge("validate", to_float_dict(self.trainer.callback_metrics))
        self._finish(results)

    def after_test(self) -> None:
        results = self._results()
        results.merge("test", to_float_dict(self.trainer.callback_metrics))
        self._finish(results)

    def after_curriculum(self) -> None:
        if self.trainer.is_global_zero:
            print(f"results.json: {Path(self.trainer.run_dir) / 'results.json'}")


def build_cli(args: list[str] | None = None, run: bool = True) -> LitCLI:
    return LitCLI(
        StudyModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_class=LitTrainer,
        auto_configure_optimizers=False,  # optimizers are built per fit by the module (F32)
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"description": DESCRIPTION},
        args=args,
        run=run,
    )


def main(argv: list[str] | None = None) -> Any:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in TOOLS:
        tool = importlib.import_module(TOOLS[args[0]])
        code = tool.main(args[1:])
        if argv is None:
            sys.exit(code or 0)
        return code
    build_cli(argv)  # None: LightningCLI reads sys.argv itself
    return None


if __name__ == "__main__":
    main()
