"""Prompt sampling (F24) and the dual tokenizer (F22, F23) of the distill study."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from lit_experiments.core.errors import ConfigError
from lit_experiments.studies.distill.components.prompts import DualTokenizer, Prompt, PromptSampler

CATEGORIES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
WORDS = ["<pad>", "</s>", "<s>", "<unk>", "a", "the", "red", "big", "object", "shape", *CATEGORIES]


@pytest.fixture(scope="module")
def teacher_tokenizer():
    """A tiny word-level transformers tokenizer (the stand-in teacher's kind): ids differ from open_clip's."""
    from lit_experiments.data.word_tokenizer import word_level_tokenizer

    return word_level_tokenizer(WORDS)


@pytest.fixture(scope="module")
def student_tokenizer():
    """open_clip's CLIP BPE tokenizer (vocabulary ships with the package: no download), context 32."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=32)


def _images(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [list(rng.choice(CATEGORIES, size=rng.integers(0, 4))) for _ in range(n)]


RATIOS = {"category": 0.5, "generic": 0.2, "negative": 0.3}


def _f24_check(sampler: PromptSampler, draws: int = 3000) -> None:
    """Over many images (each with 1-3 of 6 categories, so every kind is possible), kinds follow the ratios
    within 4 binomial standard deviations, category prompts name present categories, negatives absent ones."""
    images = [present for present in _images(draws * 2) if present][:draws]
    kinds, named = Counter(), Counter()
    for index, present in enumerate(images):
        prompt = sampler.sample(present, index=index, epoch=0)
        kinds[prompt.kind] += 1
        if prompt.kind == "category":
            assert prompt.text in present and prompt.category == prompt.text
            assert prompt.target_mask(present).sum() == present.count(prompt.text) > 0
        elif prompt.kind == "negative":
            assert prompt.text not in present and prompt.target_mask(present).sum() == 0
        else:
            assert prompt.text in sampler.generic and prompt.target_mask(present).all()
        named[prompt.text] += 1
    for kind, ratio in RATIOS.items():
        sigma = np.sqrt(draws * ratio * (1 - ratio))
        assert abs(kinds[kind] - draws * ratio) < 4 * sigma, (kind, kinds)
    assert set(CATEGORIES) <= set(named)  # every category name is drawn, as a prompt or as a negative


def test_f24_prompt_kinds_follow_the_ratios_and_negatives_name_absent_categories():
    _f24_check(PromptSampler(CATEGORIES, ["object", "shape"], RATIOS, seed=3))


_ORIGINAL_SAMPLE = PromptSampler.sample


def _seed_generic_only(self, present, index, epoch=0):  # the seed: four generic prompts, nothing else
    return Prompt(["object", "shape", "thing", "item"][index % 4], "generic")


def _category_for_negative(self, present, index, epoch=0):  # a "negative" that names a present category
    prompt = _ORIGINAL_SAMPLE(self, present, index, epoch)
    return Prompt(present[0], "negative", present[0]) if prompt.kind == "negative" else prompt


@pytest.mark.parametrize("mutant", [_seed_generic_only, _category_for_negative])
def test_f24_the_seeds_prompt_set_put_into_the_product_fails_the_check(monkeypatch, mutant):
    sampler = PromptSampler(CATEGORIES, ["object", "shape"], RATIOS, seed=3)
    monkeypatch.setattr(PromptSampler, "sample", mutant)
    with pytest.raises(AssertionError):
        _f24_check(sampler, draws=600)


def test_draws_are_deterministic_per_seed_index_and_epoch():
    sampler = PromptSampler(CATEGORIES, seed=7)
    images = _images(200, seed=1)
    first = [sampler.sample(p, i, epoch=0) for i, p in enumerate(images)]
    assert first == [PromptSampler(CATEGORIES, seed=7).sample(p, i, epoch=0) for i, p in enumerate(images)]
    assert first == [sampler.sample(p, i, epoch=0) for i, p in reversed(list(enumerate(images)))][::-1]
    assert first != [sampler.sample(p, i, epoch=1) for i, p in enumerate(images)]
    assert first != [PromptSampler(CATEGORIES, seed=8).sample(p, i) for i, p in enumerate(images)]


def test_impossible_kinds_fall_back_and_are_marked():
    sampler = PromptSampler(CATEGORIES, [], {"category": 1.0}, seed=0)
    empty = sampler.sample([], index=0)  # no object: a category prompt is impossible -> a negative prompt
    assert empty.kind == "negative" and empty.fallback and empty.text in CATEGORIES
    full = PromptSampler(CATEGORIES, seed=0, ratios={"negative": 1.0, "category": 0.0})
    everything = full.sample(CATEGORIES, index=0)  # every category present: no negative possible
    assert everything.kind == "category" and everything.fallback
    # a possible kind with ratio > 0 is never marked fallback
    assert not PromptSampler(CATEGORIES, seed=0).sample(["star"], index=5).fallback


@pytest.mark.parametrize("kwargs,match", [
    ({"categories": ["circle", "", "star"]}, r"categories\[1\].*empty"),
    ({"categories": ["circle", "star", "Circle"]}, "'Circle' is listed twice"),
    ({"categories": []}, "categories: empty"),
    ({"generic": ["object", "  "]}, r"generic\[1\].*empty"),
    ({"generic": ["object", "star"]}, "also named as categories"),
    ({"ratios": {"category": 1.0, "negativ": 0.2}}, r"ratios\.negativ"),
    ({"ratios": {"category": -1.0}}, r"ratios\.category"),
    ({"ratios": {"category": 0.0, "negative": 0.0}}, "at least one"),
    ({"generic": [], "ratios": {"generic": 0.5, "category": 0.5}}, r"ratios\.generic"),
])
def test_prompt_sampler_rejects_bad_config_naming_the_key(kwargs, match):
    args = {"categories": CATEGORIES, **kwargs}
    with pytest.raises(ConfigError, match=match):
        PromptSampler(**args)


def test_ratios_are_normalised_and_unknown_present_categories_raise():
    sampler = PromptSampler(CATEGORIES, ratios={"category": 2, "negative": 2})
    assert sampler.ratios == {"category": 0.5, "generic": 0.0, "negative": 0.5}
    with pytest.raises(ValueError, match="dodecagon"):
        sampler.sample(["dodecagon"], index=0)


def _student_text(tok, row: torch.Tensor) -> str:
    ids = [i for i in row.tolist() if i not in (0, tok.sot_token_id, tok.eot_token_id)]
    return tok.decode(ids).strip()


def _f22_check(dual: DualTokenizer, texts: list[str]) -> None:
    """Each id row decodes, by ITS OWN tokenizer, to the string it was built from."""
    enc = dual.encode(texts)
    for i, text in enumerate(texts):
        teacher = dual.teacher_tokenizer.decode(enc["teacher_input_ids"][i], skip_special_tokens=True)
        assert teacher == text.lower()
        assert _student_text(dual.student_tokenizer, enc["student_input_ids"][i]) == text.lower()
        n = int(enc["teacher_attention_mask"][i].sum())
        assert n == len(dual.teacher_tokenizer(text)["input_ids"])  # mask covers the prompt's tokens only


def test_f22_teacher_and_student_ids_come_from_their_own_tokenizers(teacher_tokenizer, student_tokenizer):
    dual = DualTokenizer(teacher_tokenizer, student_tokenizer, teacher_max_len=8, student_context=32)
    texts = ["red star", "object", "a big hexagon"]
    _f22_check(dual, texts)
    enc = dual.encode(texts)
    assert enc["teacher_input_ids"].shape == enc["teacher_attention_mask"].shape == (3, 8)
    assert enc["student_input_ids"].shape == (3, 32) and enc["student_input_ids"].dtype == torch.long
    assert not torch.equal(enc["teacher_input_ids"], enc["student_input_ids"][:, :8])  # different vocabularies


def test_f22_one_tokenizers_ids_fed_to_both_fails_the_check(teacher_tokenizer, student_tokenizer, monkeypatch):
    dual = DualTokenizer(teacher_tokenizer, student_tokenizer, teacher_max_len=8, student_context=32)

    def shared_ids(self, texts):  # the seed: the teacher's ids handed to the student too
        ids, _ = self.teacher_encode(texts)
        return torch.nn.functional.pad(ids, (0, self.student_context - ids.shape[1]))

    monkeypatch.setattr(DualTokenizer, "student_encode", shared_ids)
    with pytest.raises(AssertionError):
        _f22_check(dual, ["red star", "object"])


def _f23_check(dual: DualTokenizer, sampler: PromptSampler) -> None:
    """The sampled prompt is the text tokenized: ids decode to it, and another prompt changes both rows."""
    images = [p for p in _images(60, seed=2) if p]
    drawn = [sampler.sample(present, index=i) for i, present in enumerate(images)]
    _f22_check(dual, [p.text for p in drawn])
    a, b = next((x, y) for x, y in zip(drawn, drawn[1:]) if x.text != y.text)
    ea, eb = dual.encode([a.text]), dual.encode([b.text])
    assert not torch.equal(ea["teacher_input_ids"], eb["teacher_input_ids"])
    assert not torch.equal(ea["student_input_ids"], eb["student_input_ids"])


def test_f23_the_sampled_prompt_is_the_text_tokenized(teacher_tokenizer, student_tokenizer, monkeypatch):
    dual = DualTokenizer(teacher_tokenizer, student_tokenizer, teacher_max_len=8, student_context=32)
    sampler = PromptSampler(CATEGORIES, ["object", "shape"], RATIOS, seed=0)
    _f23_check(dual, sampler)
    encode = DualTokenizer.encode
    monkeypatch.setattr(DualTokenizer, "encode", lambda self, texts: encode(self, ["object"] * len(texts)))
    with pytest.raises(AssertionError):  # the seed: a fixed prompt tokenized whatever was sampled
        _f23_check(dual, sampler)


def test_prompts_longer_than_a_context_raise_instead_of_truncating(teacher_tokenizer, student_tokenizer):
    exact = "red star"  # teacher: 2 words + </s> = 3; student: <sot> red star <eot> = 4
    dual = DualTokenizer(teacher_tokenizer, student_tokenizer, teacher_max_len=3, student_context=4)
    assert dual.encode([exact])["student_input_ids"][0].ne(0).sum() == 4
    with pytest.raises(ConfigError, match=r"'a red star'.*4 teacher tokens.*context is 2"):
        DualTokenizer(teacher_tokenizer, student_tokenizer, teacher_max_len=2, student_context=32).encode(
            ["a red star"])
    with pytest.raises(ConfigError, match=r"'a red star'.*more than 4 student tokens"):
        DualTokenizer(teacher_tokenizer, student_tokenizer, teacher_max_len=8, student_context=4).encode(
            ["red star", "a red star"])
    with pytest.raises(ConfigError, match="empty prompt"):
        dual.encode(["red star", " "])
    with pytest.raises(ConfigError, match="student_context"):
        DualTokenizer(teacher_tokenizer, student_tokenizer, teacher_max_len=8, student_context=1)
