"""An LLM judge, as in the paper: "emotion understanding" (1 to 10) and pairwise empathy.

The judge model comes from SEMOLLAMA_JUDGE_LLM (a Hugging Face id, hub mode); unset, it
is the embedded SmolLM2-135M, and every figure it makes is labelled as weak. Scores are
read by label scoring, never by parsing free text: the log-likelihood of each answer
"1" .. "10" (each followed by the end of the turn, so "1" and "10" differ) gives a
distribution over the ten scores and the score is its expectation. Pairwise empathy
asks "A or B" in both orders and averages, so the judge's position bias cancels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch

from semollama_core import EMBEDDED_LLM, prompts

from .common import batches

JUDGE_ENV = "SEMOLLAMA_JUDGE_LLM"
EMBEDDED_LABEL = "judge: embedded SmolLM2-135M (weak)"
SCORES = tuple(range(1, 11))
JUDGE_SYSTEM_PROMPT = "You are a careful, strict evaluator of assistant responses. Answer with the requested format only."
UNDERSTANDING_RUBRIC = (
    "A speaker said the sentence below in a {emotion} tone of voice.\n"
    'Sentence: "{transcript}"\nTrue emotion of the speaker: {emotion}\n'
    'Assistant response: "{response}"\n'
    "On a scale from 1 to 10, how well does the response show understanding of the speaker's "
    "emotional state? 1 means it ignores or contradicts the emotion, 10 means it recognises the "
    "emotion and responds to it fittingly. Answer with one number from 1 to 10.")
EMPATHY_RUBRIC = (
    'A speaker said "{transcript}" in a {emotion} tone of voice.\n'
    'Response A: "{a}"\nResponse B: "{b}"\n'
    "Which response is more empathetic towards how the speaker feels? Answer A or B.")


@dataclass(frozen=True)
class JudgeItem:
    transcript: str
    emotion: str
    response: str


class Judge:
    """Scores responses with a frozen causal LM (never updated)."""

    def __init__(self, llm, label: str):
        self.llm = llm
        self.label = label
        eos = llm.tokenizer.eos_token_id
        self._score_ids = [self._ids(f" {k}") + ([eos] if eos is not None else []) for k in SCORES]

    def emotion_understanding(self, items: Sequence[JudgeItem], batch_size: int = 8) -> list[float]:
        """Expected 1-10 score per item."""
        out = []
        for batch in batches(list(items), batch_size):
            users = [UNDERSTANDING_RUBRIC.format(transcript=i.transcript, emotion=i.emotion, response=i.response)
                     for i in batch]
            probs = self._label_probs(users, "Score:", self._score_ids)
            out += [float((p * torch.tensor(SCORES, dtype=p.dtype)).sum()) for p in probs]
        return out

    def pairwise_empathy(self, items_a: Sequence[JudgeItem], responses_b: Sequence[str],
                         batch_size: int = 8) -> list[float]:
        """Probability that response A is the more empathetic, averaged over both orders."""
        choice_ids = [self._ids(" A"), self._ids(" B")]
        out = []
        pairs = list(zip(items_a, responses_b))
        for batch in batches(pairs, batch_size):
            forward = [EMPATHY_RUBRIC.format(transcript=i.transcript, emotion=i.emotion, a=i.response, b=b)
                       for i, b in batch]
            swapped = [EMPATHY_RUBRIC.format(transcript=i.transcript, emotion=i.emotion, a=b, b=i.response)
                       for i, b in batch]
            p_forward = self._label_probs(forward, "More empathetic:", choice_ids)
            p_swapped = self._label_probs(swapped, "More empathetic:", choice_ids)
            out += [float((f[0] + s[1]) / 2) for f, s in zip(p_forward, p_swapped)]
        return out

    def _label_probs(self, users: list[str], assistant_start: str, label_ids: list[list[int]]) -> torch.Tensor:
        tokenizer = self.llm.tokenizer
        texts = [prompts.render_chat(tokenizer, prompts.sanitize_user_text(u, 4000), JUDGE_SYSTEM_PROMPT,
                                     assistant_start) for u in users]
        scores = self.llm.text_label_log_likelihoods([self._ids(t) for t in texts], label_ids)
        return torch.softmax(scores.float().cpu(), dim=-1)

    def _ids(self, text: str) -> list[int]:
        return self.llm.token_ids(text)


def load_judge(system) -> Judge:
    """The judge named by SEMOLLAMA_JUDGE_LLM, else the system's own embedded LLM (weak)."""
    name = os.environ.get(JUDGE_ENV, "").strip()
    if not name or name == EMBEDDED_LLM or name == system.config.llm:
        label = EMBEDDED_LABEL if system.config.is_embedded else f"judge: {system.config.llm} (the system's own LLM)"
        return Judge(system.llm, label)
    from semollama_core import load_llm

    return Judge(load_llm(system.config.replace(llm=name)), f"judge: {name}")
