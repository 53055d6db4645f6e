"""Ablations of the shipped adapter in one table: SER UA, alignment NLL, ROUGE-L and the
emotion-fit proxy, each with a 95 % interval that resamples sentences.

    python -m eval.ablate MANIFEST --out ablate.json [--limit N] [--split S]
    python -m eval.ablate --rescore ablate.predictions.jsonl --out ablate.json

What each variant's frozen LLM reads (the emotion token comes from the adapter's supervised
emotion head; "frame tokens" are the Conformer's speech tokens, one per 80 ms):
- emotion_head: no LLM; the adapter's emotion head alone (SER only);
- speech_llm: emotion token + frame tokens, and the clip's ASR words when the adapter is
  lexical (the shipped default);
- speech_only: emotion token + frame tokens, no words (the paper's configuration);
- speech_llm_no_emotion_token: speech_llm without the emotion token;
- speech_llm_no_frame_tokens: speech_llm without the frame tokens (emotion token, and words);
- neutral_aligned: the adapter aligned without emotion conditioning;
- cascade: ASR words + the standalone SER model's label, in the emotion-conditioned prompt;
- text_only: ASR words only;
- oracle: true transcript + true emotion (the alignment target; its NLL is the floor).
SER: label scoring by the LLM of each variant's input (SER prompts never read words, so
speech_llm and speech_only score the same speech tokens). Alignment: the oracle answer's
teacher-forced NLL per token under each variant's prompt, and ROUGE-L of each variant's own
greedy answer against it; answers are decoded, and NLLs scored, by one backend.
Raw rows go to OUT.predictions.jsonl first; --rescore recomputes every figure from them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from semollama_core import QUANTIZATIONS
from semollama_core import DecodingOptions
from semollama_core import PromptInput

from .common import (AUTO_SPLIT, EvalError, argument_parser, batches, config_labels, evaluation_rows,
                     grouped_bootstrap_ci, load_metric, load_system_from_args, metadata, positive_int,
                     predictions_path, progress_bar, resampling_groups, rescore_or_evaluate, response_nll, run_cli,
                     run_meta, scoring_backend, standalone_model, ua_bootstrap_ci, write_json, write_predictions)

VARIANTS = ("emotion_head", "speech_llm", "speech_only", "speech_llm_no_emotion_token",
            "speech_llm_no_frame_tokens", "neutral_aligned", "cascade", "text_only", "oracle")
READS = {
    "emotion_head": "no LLM: the adapter's supervised emotion head alone",
    "speech_llm": "emotion token + frame tokens (+ ASR words when the adapter is lexical)",
    "speech_only": "emotion token + frame tokens, no words (the paper's configuration)",
    "speech_llm_no_emotion_token": "frame tokens (+ ASR words), no emotion token",
    "speech_llm_no_frame_tokens": "emotion token (+ ASR words), no frame tokens",
    "neutral_aligned": "speech tokens of the adapter aligned without emotion (+ ASR words when lexical)",
    "cascade": "ASR words + the standalone SER model's label",
    "text_only": "ASR words",
    "oracle": "true transcript + true emotion (alignment target)",
}
# speech variants built from speech_llm's embeddings: which of its tokens they keep
SLICES = {"speech_llm_no_emotion_token": slice(1, None), "speech_llm_no_frame_tokens": slice(0, 1)}


# ----------------------------------------------------------------------------- predicting

def run_ablation(system, utterances, variants: Sequence[str], labels: Sequence[str], *, standalone=None,
                 batch_size: int = 8, max_new_tokens: int | None = None, progress=None) -> list[dict]:
    """One raw row per utterance: each variant's SER label scores, answer and oracle NLL."""
    options = DecodingOptions(max_new_tokens=max_new_tokens or system.config.max_new_tokens)
    rows: list[dict] = []
    bar = progress_bar(len(utterances), "ablate", progress)
    for batch in batches(list(utterances), batch_size):
        rows += _ablate_batch(system, batch, variants, tuple(labels), standalone, options)
        bar.update(len(batch))
    bar.close()
    return rows


def _ablate_batch(system, batch, variants, labels, standalone, options) -> list[dict]:
    from .ser import emotion_head_probs

    clips = [system.load(str(u.audio_path)) for u in batch]
    features = system.features_many(clips, transcribe=True)   # words for the lexical path and the text systems
    asr = [f.transcript or "" for f in features]
    cascade_labels = None
    if "cascade" in variants:
        cascade_labels = [standalone.labels[int(np.argmax(p))] for p in standalone.predict_proba(clips)]
    speech = system.speech_embeddings(features, "speech_llm")
    inputs, spliced = {}, {}
    for name in variants:
        if name in ("speech_llm", "speech_only", "neutral_aligned"):
            inputs[name] = [PromptInput(name, f) for f in features]
        elif name in SLICES:
            inputs[name] = [PromptInput("speech_llm", f) for f in features]
            spliced[name] = [e[SLICES[name]] for e in speech]
        elif name == "text_only":
            inputs[name] = [PromptInput("text_only", transcript=t) for t in asr]
        elif name == "cascade":
            inputs[name] = [PromptInput("cascade", transcript=t, emotion=e) for t, e in zip(asr, cascade_labels)]
        elif name == "oracle":
            inputs[name] = [PromptInput("oracle", transcript=u.transcript or a, emotion=u.emotion)
                            for u, a in zip(batch, asr)]
    oracle_inputs = inputs.get("oracle") or [PromptInput("oracle", transcript=u.transcript or a, emotion=u.emotion)
                                             for u, a in zip(batch, asr)]
    oracle = system.generate(oracle_inputs, options)
    ser, answers, nll = {}, {}, {}
    for name in variants:
        if name == "emotion_head":
            ser[name] = [_restricted(p, labels) for p in emotion_head_probs(system, features)]
            continue
        speech_rows = spliced.get(name)
        ser[name] = [p.probs for p in system.predict_emotions(inputs[name], labels=labels, speech=speech_rows)]
        answers[name] = oracle if name == "oracle" else system.generate(inputs[name], options, speech=speech_rows)
        nll[name] = response_nll(system, inputs[name], oracle, speech=speech_rows)
    out = []
    for i, u in enumerate(batch):
        out.append({"audio": str(u.audio_path), "speaker": u.speaker, "emotion": u.emotion, "split": u.split,
                    "sentence": u.transcript, "asr_transcript": asr[i],
                    "cascade_label": cascade_labels[i] if cascade_labels else None,
                    "oracle_response": oracle[i], "backend": scoring_backend(system),
                    "ser": {n: {"predicted": max(ser[n][i], key=ser[n][i].get),
                                "probs": {l: round(float(ser[n][i][l]), 6) for l in labels}} for n in ser},
                    "responses": {n: answers[n][i] for n in answers},
                    "nll": {n: nll[n][i] for n in nll}, "extra": dict(u.extra)})
    return out


def _restricted(probs: dict, labels) -> dict:
    kept = {l: float(probs.get(l, 0.0)) for l in labels}
    total = sum(kept.values())
    return {l: (v / total if total > 0 else 1 / len(labels)) for l, v in kept.items()}


# ----------------------------------------------------------------------------- scoring

def score_ablation(rows: list[dict]) -> dict:
    """The table: per variant, SER UA, NLL, ROUGE-L and the emotion-fit proxy with 95 %
    intervals (sentence-resampled bootstrap), and NLL differences against speech_llm."""
    from .emotion_fit import check_labels, emotion_fit, proxy_label, validate_on_oracle

    if not rows or any("ser" not in r or "oracle_response" not in r for r in rows):
        raise EvalError("Ablation predictions need ser and oracle_response in every row.")
    groups = resampling_groups(rows)
    labels = list(next(iter(rows[0]["ser"].values()))["probs"]) if rows[0]["ser"] else []
    emotions = [r["emotion"] for r in rows]
    fit_labels = check_labels(labels or list(dict.fromkeys(emotions)))
    fit_ok = len(fit_labels) >= 2 and all(e in fit_labels for e in emotions)
    references = [r["oracle_response"] for r in rows]
    names = [v for v in VARIANTS if v in rows[0]["ser"] or v in rows[0]["nll"]]
    table = {}
    for name in names:
        entry = {"reads": READS[name], "n": len(rows)}
        if name in rows[0]["ser"]:
            preds = [r["ser"][name]["predicted"] for r in rows]
            entry["ser_ua"] = round(float(load_metric("unweighted_accuracy").compute(
                predictions=preds, references=emotions, labels=labels)["unweighted_accuracy"]), 4)
            entry["ser_ua_ci95"] = ua_bootstrap_ci(emotions, preds, labels, groups)
        if name in rows[0]["nll"]:
            values = [r["nll"][name] for r in rows]
            entry["nll"] = round(float(np.mean(values)), 4)
            entry["nll_ci95"] = grouped_bootstrap_ci(values, groups)
        if name in rows[0]["responses"] and name != "oracle":
            answers = [r["responses"][name] for r in rows]
            per_pair = load_metric("rouge").compute(predictions=answers, references=references)["rougeL_per_pair"]
            entry["rougeL"] = round(float(np.mean(per_pair)), 4)
            entry["rougeL_ci95"] = grouped_bootstrap_ci(per_pair, groups)
        if name in rows[0]["responses"] and fit_ok:
            fits = emotion_fit([r["responses"][name] for r in rows], emotions, fit_labels)
            p = [f["p_true"] for f in fits]
            entry["emotion_fit_proxy"] = round(float(np.mean(p)), 4)
            entry["emotion_fit_proxy_ci95"] = grouped_bootstrap_ci(p, groups)
        table[name] = entry
    report = {"variants": table, "nll_vs_speech_llm": paired_differences(rows, groups), "label_set": labels,
              "n": len(rows), "sentences": len(set(groups)),
              "interval": "95 % percentile bootstrap, 2000 resamples (seed 0), resampling sentences "
                          "(clips where the manifest has no transcript)"}
    if fit_ok:
        report["emotion_fit_proxy"] = {"label": proxy_label(None, fit_labels), "labels": fit_labels,
                                       "validation": validate_on_oracle(references, emotions, fit_labels, groups)}
    backends = {r.get("backend") for r in rows} - {None}
    if backends:
        report["backend"] = "answers decoded and NLL scored by " + ", ".join(sorted(backends))
    return report


def paired_differences(rows: list[dict], groups: list[str], reference: str = "speech_llm") -> dict:
    """Per variant: mean (its NLL - the reference's) on the same clips, with its interval."""
    out = {}
    if reference not in rows[0]["nll"]:
        return out
    for name in rows[0]["nll"]:
        if name == reference:
            continue
        diffs = [r["nll"][name] - r["nll"][reference] for r in rows]
        out[name] = {"mean": round(float(np.mean(diffs)), 4), "ci95": grouped_bootstrap_ci(diffs, groups),
                     "reference_lower_share": round(float(np.mean([d > 0 for d in diffs])), 4)}
    return out


def table_markdown(report: dict) -> str:
    """The table as Markdown (for eval/README.md and the model card)."""
    def cell(entry, key):
        if key not in entry:
            return ""
        ci = entry.get(f"{key}_ci95")
        return f"{entry[key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{entry[key]:.3f}"

    lines = ["| variant | what the LLM reads | SER UA | NLL / oracle token | ROUGE-L | emotion-fit proxy |",
             "|---|---|---|---|---|---|"]
    for name, e in report["variants"].items():
        lines.append(f"| {name} | {e['reads']} | {cell(e, 'ser_ua')} | {cell(e, 'nll')} | {cell(e, 'rougeL')} | "
                     f"{cell(e, 'emotion_fit_proxy')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

def main(argv: list[str]) -> int:
    parser = argument_parser("python -m eval.ablate", "SER UA, alignment NLL, ROUGE-L and the emotion-fit "
                             "proxy, with sentence-resampled 95 % intervals, for each ablation of the adapter.")
    parser.add_argument("manifest", nargs="?", help="JSONL or CSV manifest (audio, emotion, transcript, ...)")
    parser.add_argument("--out", required=True, help="output JSON; raw rows go to OUT.predictions.jsonl")
    parser.add_argument("--variants", default=None, help=f"comma-separated, from {','.join(VARIANTS)} (default: all)")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N rows")
    parser.add_argument("--split", default=AUTO_SPLIT, help="rows to evaluate (default: test if present, else all)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-new-tokens", type=positive_int, help="answer length (default: the config's)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, help="override the LLM quantization")
    parser.add_argument("--rescore", metavar="PREDICTIONS.jsonl", help="score saved raw rows; run no model")
    args = parser.parse_args(argv)
    report, out = rescore_or_evaluate(parser, args, score_ablation, _evaluate)
    report["markdown"] = table_markdown(report)
    write_json(out, report)
    print(report["markdown"])
    print(f"wrote {out}")
    return 0


def _variants(text: str | None) -> list[str]:
    if text is None:
        return list(VARIANTS)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in VARIANTS]
    if unknown or not names:
        raise EvalError(f"Unknown variant {unknown[0] if unknown else text!r} in --variants; "
                        f"choose from {', '.join(VARIANTS)}.")
    return [v for v in VARIANTS if v in names]


def _evaluate(args, out: Path) -> dict:
    if args.max_new_tokens and args.max_new_tokens > 1024:
        raise EvalError("--max-new-tokens must be at most 1024.")
    variants = _variants(args.variants)
    rows, labels, notes, all_rows = evaluation_rows(args.manifest, config_labels(args.quantization),
                                                    split=args.split, limit=args.limit)
    system = load_system_from_args(args.quantization)
    if not system.trained:
        notes.append("The adapter is fresh (untrained): speech figures are chance-level plumbing checks.")
    if "neutral_aligned" in variants and system.neutral_adapter is None:
        variants.remove("neutral_aligned")
        notes.append("neutral_aligned: no adapter at config neutral_adapter; skipped.")
    if "speech_llm_no_emotion_token" in variants and not system.adapter.config.emotion_token:
        variants = [v for v in variants if v not in SLICES]
        notes.append("The adapter has no emotion token: the token ablations do not apply; skipped.")
    standalone = standalone_model(system, all_rows, labels, notes) if "cascade" in variants else None
    if "cascade" in variants and standalone is None:
        variants.remove("cascade")
        notes.append("cascade: skipped (no standalone SER model).")
    predictions = run_ablation(system, rows, variants, labels, standalone=standalone, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens)
    meta = run_meta(args.manifest, system, split=args.split, limit=args.limit, variants=variants,
                    backend=scoring_backend(system))
    write_predictions(predictions_path(out), predictions, meta)
    report = score_ablation(predictions)
    report["notes"] = notes
    report["meta"] = meta
    report["metadata"] = metadata(args.manifest, system, split=args.split, limit=args.limit,
                                  predictions=str(predictions_path(out)))
    return report


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
