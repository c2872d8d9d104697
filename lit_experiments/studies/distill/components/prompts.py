"""Prompts of the distill study: which text a unit is prompted with, and the two models' token ids for it.

* :class:`PromptSampler` draws, for one image with its present categories, a prompt of one of three kinds
  (F24: the seed had only four generic prompts, so category prompts were never learned):

  - ``category``: names a category present in the image; targets = that category's instances;
  - ``generic``: a class-agnostic word (``"object"``, ``"shape"``); targets = all instances;
  - ``negative``: names a category absent from the image; targets = none (a negative unit).

  Kinds follow ``ratios``. A kind that cannot be drawn for an image (``category`` on an image without objects,
  ``negative`` when every category is present) is left out and the others renormalised for that image; if no
  kind with a positive ratio can be drawn, the sampler falls back to ``negative``, then ``category``, then
  ``generic`` (whichever the image allows), and marks the prompt ``fallback=True``.
  Draws are deterministic per ``(seed, index, epoch)`` (``numpy.random.SeedSequence``), whatever the process
  or worker.
* :class:`DualTokenizer` turns the SAME prompt strings into the teacher's ids and attention mask (a transformers
  tokenizer, e.g. SAM3's processor's) and the student's ids (open_clip's tokenizer), each by its own tokenizer
  (F22: the seed fed one tokenizer's ids to both models; F23: it never tokenized the sampled prompt). A prompt
  longer than a context is an error naming it, never truncated silently.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lit_experiments.core.errors import ConfigError

PROMPT_KINDS: tuple[str, ...] = ("category", "generic", "negative")
DEFAULT_GENERIC: tuple[str, ...] = ("object", "shape")
DEFAULT_RATIOS: dict[str, float] = {"category": 0.6, "generic": 0.2, "negative": 0.2}
Kind = Literal["category", "generic", "negative"]



@dataclass
class PromptSettings:
    """The training prompts of the distill datamodule (its ``prompts:`` argument): a :class:`PromptSampler` over the
    data's concept names with ``generic`` words at ``ratios`` (``null``: :data:`DEFAULT_RATIOS`), seeded by ``seed``
    (default: from ``seed_everything``, F50); ``per_image``: training prompts per image and epoch, distinct where
    the image allows (:meth:`PromptSampler.sample_many`), consecutive in a batch, so ignoring the prompt cannot
    lower the loss (F24)."""

    ratios: dict[str, float] | None = None
    generic: list[str] | None = field(default_factory=lambda: list(DEFAULT_GENERIC))
    seed: int | None = None
    per_image: int = 1

    def __post_init__(self) -> None:
        if int(self.per_image) < 1:
            raise ConfigError(f"data.init_args.prompts.per_image={self.per_image!r}; expected >= 1")

@dataclass(frozen=True)
class Prompt:
    """One drawn prompt: its ``text``, ``kind``, the ``category`` it names (None for generic) and whether the
    kind came from the fallback (no kind with a positive ratio was possible for the image)."""

    text: str
    kind: Kind
    category: str | None = None
    fallback: bool = False

    def target_mask(self, instance_categories: Sequence[str]) -> np.ndarray:
        """(n,) bool: which of the image's instances (given by category name) are this prompt's targets."""
        if self.kind == "generic":
            return np.ones(len(instance_categories), dtype=bool)
        return np.array([c == self.category for c in instance_categories], dtype=bool).reshape(-1)


def _check_names(key: str, names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise ConfigError(f"{key}: expected a list of strings, got the string {names!r}")
    out, seen = [], {}
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{key}[{i}] = {name!r}: empty prompt; every prompt needs a non-empty string")
        norm = name.strip().casefold()
        if norm in seen:
            raise ConfigError(f"{key}: {name!r} is listed twice (positions {seen[norm]} and {i}); each prompt "
                              "must be unique (case-insensitive)")
        seen[norm] = i
        out.append(name.strip())
    return tuple(out)


def check_ratios(ratios: Mapping[str, float] | None, has_generic: bool) -> dict[str, float]:
    """Ratios of the prompt kinds normalised to sum 1; ConfigError naming a bad key (``ratios.<key>``)."""
    if ratios is None:
        ratios = DEFAULT_RATIOS if has_generic else {k: v for k, v in DEFAULT_RATIOS.items() if k != "generic"}
    if not isinstance(ratios, Mapping):
        raise ConfigError(f"ratios: expected a mapping of {PROMPT_KINDS} to weights, got {ratios!r}")
    out = {kind: 0.0 for kind in PROMPT_KINDS}
    for key, value in ratios.items():
        if key not in PROMPT_KINDS:
            raise ConfigError(f"ratios.{key}: unknown prompt kind; expected keys among {PROMPT_KINDS}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"ratios.{key} = {value!r}: expected a finite number >= 0")
        out[key] = float(value)
    total = sum(out.values())
    if total <= 0:
        raise ConfigError(f"ratios = {dict(ratios)!r}: at least one kind needs a ratio > 0")
    if out["generic"] > 0 and not has_generic:
        raise ConfigError(f"ratios.generic = {out['generic']}: no generic prompts are given (generic: [])")
    return {k: v / total for k, v in out.items()}


class PromptSampler:
    """Draws one prompt per (image, index, epoch) from category names, generic prompts and absent categories.

    Args:
        categories: the data's category names (prompt texts of ``category`` and ``negative`` prompts);
            non-empty, unique (case-insensitive), no empty string.
        generic: class-agnostic prompts; ``None`` = :data:`DEFAULT_GENERIC`, ``[]`` = none (then the
            ``generic`` ratio must be 0).
        ratios: weights of ``category`` / ``generic`` / ``negative`` (missing keys = 0; normalised to sum 1);
            ``None`` = :data:`DEFAULT_RATIOS`.
        seed: base seed; a draw depends only on ``(seed, index, epoch)``.
    """

    def __init__(self, categories: Sequence[str], generic: Sequence[str] | None = None,
                 ratios: Mapping[str, float] | None = None, seed: int = 0) -> None:
        self.categories = _check_names("categories", categories)
        if not self.categories:
            raise ConfigError("categories: empty; category and negative prompts need the data's category names")
        self.generic = _check_names("generic", DEFAULT_GENERIC if generic is None else generic)
        clash = {g.casefold() for g in self.generic} & {c.casefold() for c in self.categories}
        if clash:
            raise ConfigError(f"generic: {sorted(clash)} also named as categories; a generic prompt targets every "
                              "instance and cannot be a category name")
        self.ratios = check_ratios(ratios, has_generic=bool(self.generic))
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ConfigError(f"seed = {seed!r}: expected an integer >= 0")
        self.seed = int(seed)

    def rng(self, index: int, epoch: int = 0) -> np.random.Generator:
        """The generator of draw ``(index, epoch)``."""
        if index < 0 or epoch < 0:
            raise ValueError(f"PromptSampler: index={index}, epoch={epoch}; expected both >= 0")
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(index), int(epoch)]))

    def _present(self, present: Iterable[str]) -> list[str]:
        names = set(present)
        unknown = names - set(self.categories)
        if unknown:
            raise ValueError(f"PromptSampler: present categories {sorted(unknown)} are not among the sampler's "
                             f"categories {list(self.categories)}")
        return [c for c in self.categories if c in names]  # fixed order: never the set's (hash-seeded) order

    def sample(self, present: Iterable[str], index: int, epoch: int = 0) -> Prompt:
        """A prompt for an image whose instances have the categories ``present`` (names, repeats allowed)."""
        return self.sample_many(present, index, epoch, 1)[0]

    def sample_many(self, present: Iterable[str], index: int, epoch: int = 0, k: int = 1) -> list[Prompt]:
        """``k`` prompts for one image with distinct texts where the image allows it (each drawn as
        :meth:`sample` draws, redrawn up to 16 times on a repeat): the image's units then differ only through the
        prompt, so a student that ignores the text cannot lower its loss. The first equals :meth:`sample`."""
        rng = self.rng(index, epoch)
        here = self._present(present)
        absent = [c for c in self.categories if c not in here]
        out = [self._draw(rng, here, absent)]
        for _ in range(1, k):
            draw = self._draw(rng, here, absent)
            for _ in range(16):
                if draw.text not in {p.text for p in out}:
                    break
                draw = self._draw(rng, here, absent)
            out.append(draw)
        return out

    def _draw(self, rng: np.random.Generator, here: list[str], absent: list[str]) -> Prompt:
        possible = {"category": bool(here), "generic": bool(self.generic), "negative": bool(absent)}
        weights = np.array([self.ratios[k] if possible[k] else 0.0 for k in PROMPT_KINDS])
        fallback = weights.sum() <= 0
        if fallback:
            kind = next(k for k in ("negative", "category", "generic") if possible[k])
        else:
            kind = PROMPT_KINDS[int(rng.choice(len(PROMPT_KINDS), p=weights / weights.sum()))]
        if kind == "category":
            name = here[int(rng.integers(len(here)))]
            return Prompt(name, "category", name, fallback)
        if kind == "negative":
            name = absent[int(rng.integers(len(absent)))]
            return Prompt(name, "negative", name, fallback)
        return Prompt(self.generic[int(rng.integers(len(self.generic)))], "generic", None, fallback)


def fixed_units(presents: Sequence[Sequence[str]], categories: Sequence[str], generic: str | None,
                seed: Sequence[int]) -> list[tuple[int, Prompt]]:
    """The fixed evaluation units of a split: per item ``i`` (an image or a clip), every present concept, one absent
    concept (drawn from ``numpy.random.default_rng(seed)``) and, with ``generic``, that generic prompt."""
    rng = np.random.default_rng(list(seed))
    units: list[tuple[int, Prompt]] = []
    for i, present in enumerate(presents):
        units += [(i, Prompt(c, "category", c)) for c in present]
        absent = [c for c in categories if c not in present]
        if absent:
            c = absent[int(rng.integers(len(absent)))]
            units.append((i, Prompt(c, "negative", c)))
        if generic:
            units.append((i, Prompt(generic, "generic")))
    return units


def _check_texts(texts: str | Sequence[str]) -> list[str]:
    items = [texts] if isinstance(texts, str) else list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"prompt {i} = {text!r}: empty prompt; every prompt needs a non-empty string")
    return items


class DualTokenizer:
    """Teacher and student token ids built from the same prompt strings, each by its own tokenizer (F22, F23).

    Args:
        teacher_tokenizer: a transformers tokenizer (``__call__`` with ``padding`` / ``max_length`` /
            ``return_tensors``; e.g. ``Sam3Processor.tokenizer``).
        student_tokenizer: an open_clip tokenizer: ``tok(texts, context_length=n)`` -> (N, n) LongTensor padded
            with ``student_pad_id`` (``open_clip.get_tokenizer(name)`` or
            ``open_clip.tokenizer.SimpleTokenizer(context_length=32)``; both work offline).
        teacher_max_len: the teacher's text context (ids padded to it; SAM3: 32).
        student_context: the student's text context (MobileCLIP here: 32).
        student_pad_id: the student tokenizer's padding id (open_clip: 0).

    ``encode(texts)`` returns ``teacher_input_ids`` / ``teacher_attention_mask`` (N, teacher_max_len) and
    ``student_input_ids`` (N, student_context). A prompt that needs more tokens than a context (special tokens
    included) raises a ConfigError naming it: open_clip would truncate it silently.
    """

    def __init__(self, teacher_tokenizer: Callable[..., Any], student_tokenizer: Callable[..., Tensor],
                 teacher_max_len: int, student_context: int = 32, student_pad_id: int = 0) -> None:
        for key, value in (("teacher_max_len", teacher_max_len), ("student_context", student_context)):
            if isinstance(value, bool) or int(value) != value or value < 2:
                raise ConfigError(f"DualTokenizer: {key} = {value!r}; expected an integer >= 2")
        self.teacher_tokenizer, self.student_tokenizer = teacher_tokenizer, student_tokenizer
        self.teacher_max_len, self.student_context = int(teacher_max_len), int(student_context)
        self.student_pad_id = int(student_pad_id)

    def teacher_encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """(ids, attention_mask) of the teacher tokenizer, padded to ``teacher_max_len``."""
        lengths = [len(ids) for ids in self.teacher_tokenizer(texts, padding=False, truncation=False)["input_ids"]]
        for text, n in zip(texts, lengths):
            if n > self.teacher_max_len:
                raise ConfigError(f"prompt {text!r} needs {n} teacher tokens; the teacher's text context is "
                                  f"{self.teacher_max_len} (shorten the prompt or raise teacher_max_len)")
        enc = self.teacher_tokenizer(texts, padding="max_length", max_length=self.teacher_max_len,
                                     truncation=False, return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def student_encode(self, texts: list[str]) -> Tensor:
        """(N, student_context) ids of the student tokenizer (:func:`student_ids`)."""
        return student_ids(self.student_tokenizer, texts, self.student_context, self.student_pad_id)

    def encode(self, texts: str | Sequence[str]) -> dict[str, Tensor]:
        """Both models' ids for the same strings (see the class doc)."""
        items = _check_texts(texts)
        teacher_ids, teacher_mask = self.teacher_encode(items)
        return {"teacher_input_ids": teacher_ids, "teacher_attention_mask": teacher_mask,
                "student_input_ids": self.student_encode(items)}

    __call__ = encode


def student_ids(tokenizer: Callable[..., Tensor], texts: Sequence[str], context: int, pad_id: int = 0) -> Tensor:
    """(N, ``context``) ids of an open_clip ``tokenizer`` (``tok(texts, context_length=n)``); a prompt that fills
    more than the context (its token at position ``context`` of a one-longer encoding is not padding) raises a
    ConfigError naming it (open_clip would truncate it silently)."""
    texts = list(texts)
    longer = torch.as_tensor(tokenizer(texts, context_length=context + 1))
    over = longer[:, context] != pad_id
    if over.any():
        text = texts[int(over.nonzero()[0, 0])]
        raise ConfigError(f"prompt {text!r} needs more than {context} student tokens (the student's text "
                          f"context); shorten the prompt or raise student_context")
    ids = torch.as_tensor(tokenizer(texts, context_length=context)).long()
    if ids.shape != (len(texts), context):
        raise ValueError(f"student tokenizer returned {tuple(ids.shape)}; expected ({len(texts)}, {context})")
    return ids
