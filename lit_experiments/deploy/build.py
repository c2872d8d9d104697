"""A study built from its config files outside a LightningCLI run (the tools ``lit-exp export`` and ``lit-exp
quantize``, a study's demo): the model and the datamodule of the configs, put in a checkpoint's stage with its
weights loaded, and a reference batch."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import CheckpointError, ConfigError


def build_study(configs: Sequence[str]) -> tuple[Any, Any, list[Any] | None]:
    """The model, the datamodule and the ``stages`` (or None) of the composed ``configs`` (any study: their
    ``model:`` / ``data:`` class paths), seeded with the config's ``seed_everything`` (default 0)."""
    import lightning as L
    from jsonargparse import ArgumentError, ArgumentParser

    from ..core.configs import load_composed
    from ..core.errors import check_yaml_file
    from ..core.specs import StageSpec
    from ..core.study import StudyModule

    for config in configs:
        check_yaml_file(config)
    raw = load_composed(*configs)  # the one composition rule of the CLI (F48)
    missing = [k for k in ("model", "data") if k not in raw]
    if missing:
        raise ConfigError(f"{' + '.join(configs)}: no {' / '.join(missing)} section; expected a study config with "
                          "model: and data: (class_path / init_args)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=StudyModule)
    parser.add_argument("--data", type=L.LightningDataModule)
    parser.add_argument("--stages", type=list[StageSpec] | None, default=None)
    L.seed_everything(int(raw.get("seed_everything") or 0), verbose=False)
    try:
        cfg = parser.parse_object({k: raw[k] for k in ("model", "data", "stages") if k in raw})
    except ArgumentError as err:
        from ..core.errors import clean_parser_message

        raise ConfigError(f"{' + '.join(configs)}: {'; '.join(clean_parser_message(str(err)))}") from err
    init = parser.instantiate_classes(cfg)
    return init.model, init.data, init.stages


def load_study(configs: Sequence[str], ckpt: str) -> tuple[Any, Any, Any]:
    """Build the study of ``configs``, put it in the checkpoint's stage and load ``ckpt`` (``init``: the
    untrained model, on purpose); returns ``(model in eval mode, datamodule, CheckpointInfo | None)``."""
    from ..core.checkpoints import NO_CHECKPOINT, load_weights_for_eval
    from ..core.curriculum import apply_data_overrides
    from ..core.lazy import lazy_build

    model, dm, stages = build_study(configs)

    def enter_stage(name: str | None) -> None:
        if not stages:
            return
        names = [s.name for s in stages]
        index = names.index(name) if name in names else len(stages) - 1
        for stage in stages[: index + 1]:
            apply_data_overrides(dm, stage)
        model.set_stage(stages[index], in_curriculum=False)

    info = None
    if ckpt == NO_CHECKPOINT:
        enter_stage(None)
        lazy_build(model, dm.example_batch())
    else:
        try:
            info = load_weights_for_eval(model, dm, ckpt, prepare=enter_stage)
        except CheckpointError as err:  # its messages name the flag of `lit-exp test`
            raise CheckpointError(str(err).replace("--ckpt_path", "--ckpt")) from err
    return model.eval(), dm, info


def reference_batch(dm: Any, split: str = "test") -> Any:
    """The first batch of the test loader (``split="test"``) or the datamodule's example batch."""
    if split == "test":
        dm.setup("test")
        loaders = dm.test_dataloader()
        return next(iter(loaders[0] if isinstance(loaders, (list, tuple)) else loaders))  # the first test loader
    return dm.example_batch()


# ---------------------------------------------------------------------- the command


def default_out(configs: Sequence[str], info: Any, sub: str) -> Path:
    """``<run_dir>/<sub>`` (``runs/<sub>/<config stem>/<sub>`` without a run), or ``<sub>-2``, ``-3``, ... when an
    earlier call wrote there: a folder of results is a record, never overwritten."""
    run_dir = getattr(info, "run_dir", None)
    base = (Path(run_dir) if run_dir else Path("runs") / sub / Path(configs[-1]).stem) / sub
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{sub}-{n}")
    return path
