"""`lit-exp`: LightningCLI with fit / validate / test / predict / curriculum, plus plain tools.

    lit-exp fit -c configs/X/run.yaml [-c more.yaml] [--trainer.max_epochs 3]
    lit-exp curriculum -c configs/satipatthana/demo.yaml [--only adapter,samatha] [--resume runs/...]
    lit-exp test -c configs/X/run.yaml --ckpt_path runs/X/stages/01_head/final.ckpt
    lit-exp data shapes --out DIR --format movi        (data tools)
    lit-exp <tool> ...                                 (tools; studies register theirs in their plugin.py)

This module imports neither torch nor lightning: ``lit-exp --help`` and the plain tools start fast; the
LightningCLI (:mod:`lit_experiments.core.litcli`) is imported for a Lightning subcommand only. Errors of the
workbench, of the config and of the data are printed as one short block on stderr (exit code 2 for the
config, 1 at run time); ``--debug`` or ``LIT_EXP_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from . import registry

# non-Lightning commands of the core: name -> module with ``main(argv)``; studies add theirs in their plugin.py
registry.register_tool("data", "lit_experiments.data.tools")
registry.register_tool("curves", "lit_experiments.experiments.curves")
registry.register_tool("report", "lit_experiments.experiments.report")
registry.register_tool("demo", "lit_experiments.demo")
registry.register_tool("sweep", "lit_experiments.experiments.sweep")
registry.register_tool("cv", "lit_experiments.experiments.cv")
registry.register_tool("export", "lit_experiments.deploy.export")
registry.register_tool("quantize", "lit_experiments.deploy.quantize")
registry.register_tool("preflight", "lit_experiments.experiments.preflight")

#: Lightning subcommands and what they do (the fast ``--help`` lists them without importing Lightning)
SUBCOMMANDS = {
    "fit": "train one stage (a config without `stages:`)",
    "curriculum": "run every stage of a config's `stages:` list, each a new Trainer, then test",
    "validate": "score a checkpoint on the validation set (--ckpt_path; writes <run_dir>/eval/)",
    "test": "score a checkpoint on the test set (--ckpt_path; writes <run_dir>/eval/)",
    "predict": "write the study's outputs for the test set to files (--ckpt_path; <run_dir>/eval/)",
}


def description() -> str:
    return ("lit_experiments: vision studies as LightningModule + LightningDataModule pairs, run from YAML. "
            "Other commands: " + ", ".join(f"`lit-exp {t}`" for t in registry.tools()) + ".")


def _summary(module: str) -> str:
    """First docstring line of a tool's module of this package, read without importing it (nor its parents)."""
    head, _, rest = module.partition(".")
    if head != __package__ or not rest:
        return ""
    base = Path(__file__).parent.joinpath(*rest.split("."))
    try:
        source = (base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py").read_text()
        doc = ast.get_docstring(ast.parse(source)) or ""
    except (OSError, SyntaxError):
        return ""
    return doc.strip().splitlines()[0].replace("``", "`") if doc.strip() else ""


def fast_help() -> str:
    """``lit-exp --help`` without building the LightningCLI parser."""
    lines = ["usage: lit-exp [--debug] SUBCOMMAND [-c CONFIG.yaml ...] [--key value ...]",
             "       lit-exp TOOL [tool options]", "", description(), "", "Lightning subcommands "
             "(`lit-exp SUBCOMMAND --help` lists every option):"]
    lines += [f"  {name:<12} {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "Tools (`lit-exp TOOL --help`):"]
    width = max([14, *(len(name) for name in registry.tools())])
    lines += [f"  {name:<{width}} {_summary(module)}" for name, module in registry.tools().items()]
    lines += ["", "Options:", "  -h, --help   this message",
              "  --debug      full traceback on an error (also: LIT_EXP_DEBUG=1)"]
    return "\n".join(lines)


def build_cli(args: list[str] | None = None, run: bool = True) -> Any:
    """The LightningCLI (:class:`lit_experiments.core.litcli.LitCLI`) for ``args`` (``None``: ``sys.argv``)."""
    from .core.litcli import build_cli as _build

    return _build(args, run=run, description=description())


def __getattr__(name: str) -> Any:
    if name == "LitCLI":
        from .core.litcli import LitCLI

        return LitCLI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _run(args: list[str], from_argv: bool) -> Any:
    tools = registry.tools()
    if args and args[0] in tools:
        return importlib.import_module(tools[args[0]]).main(args[1:])
    if not args or args[0] in ("-h", "--help"):
        print(fast_help(), file=sys.stdout if args else sys.stderr)
        raise SystemExit(0 if args else 2)
    if not args[0].startswith("-") and args[0] not in SUBCOMMANDS:
        from .core.errors import ConfigError

        raise ConfigError(f"unknown subcommand or tool {args[0]!r}; expected one of "
                          f"{', '.join(list(SUBCOMMANDS) + list(tools))}")
    from .core.litcli import run_command

    run_command(args, from_argv=from_argv, description=description())
    return None


def main(argv: list[str] | None = None) -> Any:
    """Entry point of ``lit-exp`` and ``python -m lit_experiments``; ``argv=None`` reads ``sys.argv``.

    Called with ``argv`` (tests, scripts) a tool's return code is returned and an error raises ``SystemExit``;
    as the console script it exits with the code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("LIT_EXP_DEBUG", "").lower() not in ("", "0", "false", "no")
    if "--debug" in args and (args[0] == "--debug" or args[0] in SUBCOMMANDS):
        args.remove("--debug")
        debug = True
    if argv is None and args != sys.argv[1:]:
        sys.argv[1:] = args  # LightningCLI reads sys.argv itself when argv is None
    try:
        code = _run(args, from_argv=argv is None)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - known errors become one block, bugs keep their traceback
        if debug:
            raise
        from .core.errors import explain

        report = explain(exc, args[0] if args and args[0] in SUBCOMMANDS else None)
        if report is None:
            raise
        sys.stdout.flush()
        print(report.render(), file=sys.stderr)
        raise SystemExit(report.exit_code) from None
    if argv is None:
        sys.exit(code or 0)
    return code


if __name__ == "__main__":
    main()
