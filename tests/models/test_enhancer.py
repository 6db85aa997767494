"""The prompt enhancer: non-empty, seeded, capped output; the caller's RNG untouched."""

from __future__ import annotations

import pytest
import torch

from models.enhancer import SYSTEM_PROMPT, PromptEnhancer

PROMPT = "a cat on a beach"


def test_returns_new_text(enhancer: PromptEnhancer) -> None:
    enhanced = enhancer.enhance(PROMPT, seed=1)
    assert enhanced
    assert enhanced == enhanced.strip()
    assert enhanced != PROMPT


def test_same_seed_same_text_other_seed_other_text(enhancer: PromptEnhancer) -> None:
    first = enhancer.enhance(PROMPT, seed=1, max_new_tokens=24)
    assert enhancer.enhance(PROMPT, seed=1, max_new_tokens=24) == first
    assert enhancer.enhance(PROMPT, seed=2, max_new_tokens=24) != first


def test_max_new_tokens_caps_the_output(enhancer: PromptEnhancer) -> None:
    short = enhancer.enhance(PROMPT, seed=1, max_new_tokens=3)
    assert 0 < len(enhancer.tokenizer(short, add_special_tokens=False).input_ids) <= 6  # bytes may re-merge
    with pytest.raises(ValueError, match="`max_new_tokens` must be at least 1, got 0"):
        enhancer.enhance(PROMPT, seed=1, max_new_tokens=0)


def test_the_callers_random_state_is_untouched(enhancer: PromptEnhancer) -> None:
    state = torch.random.get_rng_state()
    enhancer.enhance(PROMPT, seed=1, max_new_tokens=4)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_an_empty_answer_keeps_the_original_prompt(enhancer: PromptEnhancer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enhancer.tokenizer, "decode", lambda *args, **kwargs: "  \n")
    assert enhancer.enhance(PROMPT, seed=1, max_new_tokens=4) == PROMPT


def test_system_prompt_asks_for_a_wan_style_rewrite() -> None:
    assert "80-100 words" in SYSTEM_PROMPT
    assert "camera movement" in SYSTEM_PROMPT
