"""The workbench's own error classes and the one-screen report ``lit-exp`` prints for an error.

Raise :class:`ConfigError` for a bad command line or YAML (exit code 2), :class:`CheckpointError` for a
checkpoint that does not fit the config (exit code 2) and :class:`LitExpError` for anything else the user can
fix (exit code 1). The message is the whole report: what went wrong, where (file / key / line), what was
expected and how to fix it. The CLI prints it without a traceback (``--debug`` or ``LIT_EXP_DEBUG=1`` show it).

This module imports only the standard library (and, lazily, yaml), so the CLI can use it at no start-up cost.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path

#: a failure-mode id of docs/lessons.md (F01..F99) in a message marks a guard's error
LESSON_ID = re.compile(r"\bF\d{2}\b")
#: at most this many message lines are printed (the rest is cut with a note)
MAX_LINES = 8
PACKAGE_DIR = Path(__file__).resolve().parents[1]


class LitExpError(Exception):
    """Base of the workbench's own errors: a message a user can act on; printed without a traceback."""

    exit_code = 1


class ConfigError(LitExpError, ValueError):
    """A bad command line, YAML file or config value (exit code 2)."""

    exit_code = 2


class CheckpointError(LitExpError, ValueError):
    """A checkpoint that is missing, unreadable or of another study than the config (exit code 2)."""

    exit_code = 2


class HealthError(LitExpError, RuntimeError):
    """A guard found a run that would train wrongly (bad globs, lazy parts, a failed health check).

    The message is complete on its own (what, where, likely cause with the LESSONS id), so a CLI can print
    it as one block without the traceback.
    """


@dataclass
class ErrorReport:
    """What the CLI prints for an error: the message lines, where it was raised and the exit code."""

    lines: list[str]
    exit_code: int
    where: str | None = None
    hints: list[str] = field(default_factory=list)

    def render(self, prog: str = "lit-exp") -> str:
        lines = [line.rstrip() for line in self.lines if line.strip()] or ["(no message)"]
        if len(lines) > MAX_LINES:
            lines = lines[: MAX_LINES - 1] + [f"... ({len(lines) - MAX_LINES + 1} more lines: run with --debug)"]
        out = [f"{prog}: error: {lines[0]}"] + [f"  {line}" for line in lines[1:]]
        if self.where:
            out.append(f"  at {self.where}")
        out += [f"  {hint}" for hint in self.hints]
        return "\n".join(out)


def _is_argument_error(exc: BaseException) -> bool:
    return any(c.__name__ == "ArgumentError" and c.__module__.startswith(("jsonargparse", "argparse"))
               for c in type(exc).__mro__)


def _is_yaml_error(exc: BaseException) -> bool:
    return any(c.__module__.startswith("yaml") for c in type(exc).__mro__)


def _class_named(exc: BaseException, name: str) -> bool:
    return any(c.__name__ == name for c in type(exc).__mro__)


def clean_parser_message(message: str) -> list[str]:
    """jsonargparse's message without the Union / NoneType / NestedArg noise."""
    keep = []
    for line in str(message).splitlines():
        text = line.strip()
        if not text or "NoneType" in text or "NestedArg" in text or text.startswith("Given value type"):
            continue
        text = text.replace("Does not validate against any of the types in ", "expected ")
        text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
        text = text.lstrip("- ")
        if text not in keep:
            keep.append(text)
    return keep


def where_raised(exc: BaseException) -> str | None:
    """``file:line in function`` of the innermost frame of this package (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if not frames:
        return None
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(PACKAGE_DIR)]
    frame = (ours or frames)[-1]
    path = Path(frame.filename)
    try:
        path = path.resolve().relative_to(PACKAGE_DIR.parent)
    except ValueError:
        pass
    return f"{path}:{frame.lineno} ({frame.name})"


def _classify(exc: BaseException, subcommand: str | None) -> ErrorReport | None:
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    help_hint = f"see `lit-exp {subcommand} --help`" if subcommand else "see `lit-exp --help`"
    if isinstance(exc, LitExpError):
        hints = [help_hint] if isinstance(exc, ConfigError) else []
        return ErrorReport(message.splitlines(), exc.exit_code, hints=hints)
    if _is_argument_error(exc):
        return ErrorReport(clean_parser_message(message), 2, hints=[help_hint])
    if _is_yaml_error(exc):
        return ErrorReport(message.splitlines(), 2)
    if isinstance(exc, KeyboardInterrupt):
        return ErrorReport([message or "interrupted"], 130)
    if _class_named(exc, "HealthError") or (isinstance(exc, RuntimeError) and LESSON_ID.search(message)):
        return ErrorReport(message.splitlines(), 1, where_raised(exc))
    if isinstance(exc, (ValueError, FileNotFoundError, KeyError, NotADirectoryError, IsADirectoryError)):
        kind = type(exc).__name__
        lines = message.splitlines() or [kind]
        if kind not in ("ValueError",):
            lines[0] = f"{kind}: {lines[0]}"
        return ErrorReport(lines, 1, where_raised(exc))
    return None


def explain(exc: BaseException, subcommand: str | None = None) -> ErrorReport | None:
    """The report for ``exc`` (or for the first known error in its cause chain); ``None`` for a bug.

    Unknown exceptions (``TypeError``, ``AttributeError``, ...) are bugs: the CLI re-raises them with the
    full traceback.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not c for c in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    reports = [(c, _classify(c, subcommand)) for c in chain]
    reports = [(c, r) for c, r in reports if r is not None]
    if not reports:
        return None
    # jsonargparse wraps a constructor's error ("Does not validate against any of the Union subtypes"):
    # the wrapped one says what is wrong
    cause, report = next(((c, r) for c, r in reports if not _raised_in_parser(c)), reports[0])
    if cause is not exc and report.where is None and not isinstance(cause, LitExpError):
        report.where = where_raised(cause)
    if report.exit_code != 2:  # a config error's traceback helps nobody
        report.hints.append("run with --debug (or LIT_EXP_DEBUG=1) for the traceback")
    return report


def _raised_in_parser(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    return bool(frames) and "jsonargparse" in frames[-1].filename and not _is_argument_error(exc)


def check_yaml_file(path: str | Path) -> None:
    """Raise :class:`ConfigError` naming ``path`` and the line if it is missing or not valid YAML."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        with p.open() as fh:
            yaml.safe_load(fh)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise ConfigError(f"{p}{line}: not valid YAML: {problem}" + (f" ({context})" if context else "")
                          + "\ncheck the indentation and the brackets / quotes on that line or the one before"
                          ) from err
