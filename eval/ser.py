"""Speech emotion recognition accuracy of every system, from a manifest.

    python -m eval.ser MANIFEST --out ser.json [--systems speech_llm,text_only,standalone]
    python -m eval.ser --rescore ser.predictions.jsonl --out ser.json

Raw predictions (one row per utterance and system) are written first, next to the
output (FILE.predictions.jsonl); scoring reads only them, so `--rescore` recomputes every
figure without running a model.

Systems: speech_llm, speech_only and neutral_aligned (the LLM names the emotion from speech,
scored by label log-likelihood; SER prompts read no words, so speech_llm and speech_only
score the same speech tokens), emotion_head (the adapter's supervised head alone, no LLM),
text_only (the same question over the ASR transcript, or the
manifest's with --given-transcripts), standalone (openSMILE eGeMAPS + linear; the
shipped model, else one fitted on the manifest's train split).

The label set is the manifest's labels that the configuration also lists (its order);
rows with other labels are left out with a note. Rows evaluated: the test split when
the manifest has one, otherwise every row (--split overrides).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from semollama_core import QUANTIZATIONS
from semollama_core import Utterance
from semollama_core import PromptInput

from .common import (rescore_or_evaluate, AUTO_SPLIT, EvalError, argument_parser, batches, config_labels,
                     evaluation_rows, load_metric, load_system_from_args, metadata, positive_int,
                     predictions_path, progress_bar, run_cli, run_meta, save_figure, standalone_model,
                     ua_bootstrap_ci, write_json, write_predictions)

# speech_only scores the same speech tokens as speech_llm (SER prompts never read words); it is
# here so that robustness and the app can name the paper's configuration.
LLM_SYSTEMS = ("speech_llm", "speech_only", "neutral_aligned", "text_only")
SPEECH_FEATURE_SYSTEMS = ("speech_llm", "speech_only", "neutral_aligned", "emotion_head")   # need the clip's features
SER_SYSTEMS = LLM_SYSTEMS + ("emotion_head", "standalone")
DEFAULT_SYSTEMS = ("speech_llm", "text_only", "standalone")
SNR_EDGES = (0, 5, 10, 20, 30)   # dB; noise-condition fields are grouped into these bands
MAX_GROUPS = 30                  # a field with more distinct values is not broken down


# ----------------------------------------------------------------------------- predicting

def run_ser(system, utterances: Sequence[Utterance], systems: Sequence[str] = DEFAULT_SYSTEMS,
            batch_size: int = 16, progress=None, *, labels: Sequence[str] | None = None,
            given_transcripts: bool = False, standalone=None,
            transform: Callable[[Utterance, np.ndarray], np.ndarray] | None = None,
            extra: dict | None = None) -> list[dict]:
    """Raw predictions: one dict per utterance per system.

    labels: the label set (default: the utterances' labels the configuration lists).
    standalone: a StandaloneSER (default: system.standalone_ser), needed for "standalone".
    transform: changes each loaded clip before every system sees it (robustness noise).
    extra: fields added to every row's `extra` (e.g. the noise condition).
    progress: None (bar on a terminal), True/False, or a callable(done, total).
    """
    unknown = [s for s in systems if s not in SER_SYSTEMS]
    if unknown:
        raise EvalError(f"Unknown system {unknown[0]!r}; choose from {', '.join(SER_SYSTEMS)}.")
    labels = tuple(labels or [l for l in system.config.labels if l in {u.emotion for u in utterances}])
    standalone = standalone if standalone is not None else system.standalone_ser
    if "standalone" in systems and standalone is None:
        raise EvalError("The standalone system needs a standalone SER model (none shipped or given).")
    if "neutral_aligned" in systems and system.neutral_adapter is None:
        raise EvalError("The neutral_aligned system needs its adapter (config neutral_adapter).")
    rows: list[dict] = []
    bar = None if callable(progress) else progress_bar(len(utterances), "SER", progress)
    for batch in batches(list(utterances), batch_size):
        rows += _predict_batch(system, batch, systems, labels, given_transcripts, standalone, transform, extra)
        if bar is not None:
            bar.update(len(batch))
        else:
            progress(min(len(rows) // len(systems), len(utterances)), len(utterances))
    if bar is not None:
        bar.close()
    return rows


def _predict_batch(system, batch, systems, labels, given_transcripts, standalone, transform, extra) -> list[dict]:
    return [row for rows in prediction_steps(system, batch, systems, labels=labels,
                                             given_transcripts=given_transcripts, standalone=standalone,
                                             transform=transform, extra=extra) for row in rows]


def prediction_steps(system, batch, systems, *, labels, given_transcripts: bool = False, standalone=None,
                     transform=None, extra: dict | None = None) -> Iterator[list[dict]]:
    """One batch's predictions in short steps: loading the clips with their features and words
    (yields []), then each system's rows in turn. The Evaluate tab holds the model slot for one
    step at a time, so a Talk turn waits for one step, never a whole batch."""
    clips = [system.load(str(u.audio_path)) for u in batch]
    if transform is not None:
        clips = [transform(u, clip) for u, clip in zip(batch, clips)]
    features = (system.features_many(clips, transcribe=False)  # label scoring reads no words
                if set(SPEECH_FEATURE_SYSTEMS) & set(systems) else None)
    transcripts = None
    if "text_only" in systems:
        # with features, the ASR decodes their encoder states (the same words, one encoder pass)
        transcripts = [u.transcript if given_transcripts and u.transcript
                       else system.transcribe(c, features[i] if features else None)
                       for i, (u, c) in enumerate(zip(batch, clips))]
    yield []
    for name in systems:
        if name == "standalone":
            probs = [_restricted(dict(zip(standalone.labels, map(float, p))), labels)
                     for p in standalone.predict_proba(clips)]
        elif name == "emotion_head":
            probs = [_restricted(p, labels) for p in emotion_head_probs(system, features)]
        else:
            inputs = [PromptInput(name, features[i] if features else None,
                                  transcripts[i] if name == "text_only" else None) for i in range(len(batch))]
            probs = [p.probs for p in system.predict_emotions(inputs, labels=labels)]
        out = []
        for i, u in enumerate(batch):
            row = {"audio": str(u.audio_path), "speaker": u.speaker, "emotion": u.emotion, "split": u.split,
                   "sentence": u.transcript, "system": name, "predicted": max(probs[i], key=probs[i].get),
                   "probs": {l: round(float(probs[i][l]), 6) for l in labels},
                   "extra": {**u.extra, **(extra or {})}}
            if name in ("speech_llm", "speech_only", "emotion_head") and features and features[i].p_english is not None:
                row["p_english"] = round(features[i].p_english, 4)   # the language router's reading
                row["routed_other_language"] = system.routed(features[i])
            if name == "text_only":
                row["transcript"] = transcripts[i]
                row["transcript_source"] = "manifest" if given_transcripts and u.transcript else "asr"
            out.append(row)
        yield out


def emotion_head_probs(system, features) -> list[dict[str, float]]:
    """The adapter's supervised emotion head alone (no LLM): its softmax over the adapter's
    labels, one clip at a time (so no clip's padding reaches another)."""
    return system.emotion_head(features)


def _restricted(probs: dict[str, float], labels: Sequence[str]) -> dict[str, float]:
    """The standalone model's probabilities over the label set, renormalised."""
    kept = {l: probs.get(l, 0.0) for l in labels}
    total = sum(kept.values())
    return {l: (v / total if total > 0 else 1.0 / len(labels)) for l, v in kept.items()}


# ----------------------------------------------------------------------------- scoring

def score_predictions(predictions: list[dict], labels: Sequence[str] | None = None) -> dict:
    """Per-system UA, WA, macro-F1, confusion; then the same by speaker and by extra field."""
    _check_prediction_rows(predictions)
    labels = list(labels or _labels_of(predictions))
    by_system: dict[str, list[dict]] = defaultdict(list)
    for row in predictions:
        by_system[row["system"]].append(row)
    scored = {name: {**class_scores(rows, labels, with_confusion=True), "ua_ci95": ua_ci95(rows, labels)}
              for name, rows in by_system.items()}
    return {"systems": scored, "interval": INTERVAL_NOTE, "label_set": labels, "breakdowns": breakdowns(predictions, labels)}


INTERVAL_NOTE = ("ua_ci95: 95 % percentile bootstrap (2000 resamples, seed 0) that resamples sentences "
                 "(the manifest transcript) and, for rows without one, clips")


def ser_groups(rows: list[dict]) -> list[str]:
    """Each SER row's resampling unit: its sentence when the manifest gave one, else its clip."""
    return [f"sentence:{' '.join(str(r['sentence']).lower().split())}" if r.get("sentence") else f"clip:{r['audio']}"
            for r in rows]


def ua_ci95(rows: list[dict], labels: Sequence[str]) -> list[float] | None:
    return ua_bootstrap_ci([r["emotion"] for r in rows], [r["predicted"] for r in rows], labels, ser_groups(rows))


def class_scores(rows: list[dict], labels: Sequence[str], with_confusion: bool = False) -> dict:
    refs = [r["emotion"] for r in rows]
    preds = [r["predicted"] for r in rows]
    out = {"ua": load_metric("unweighted_accuracy").compute(predictions=preds, references=refs,
                                                            labels=list(labels))["unweighted_accuracy"],
           "wa": load_metric("accuracy").compute(predictions=preds, references=refs)["accuracy"],
           "macro_f1": load_metric("macro_f1").compute(predictions=preds, references=refs,
                                                       labels=list(labels))["macro_f1"],
           "n": len(rows)}
    if with_confusion:
        out["labels"] = list(labels)
        out["confusion"] = load_metric("confusion").compute(predictions=preds, references=refs,
                                                            labels=list(labels))["confusion"]
    return out


def breakdowns(predictions: list[dict], labels: Sequence[str]) -> dict:
    """{field: {group: {system: {ua, wa, macro_f1, n}}}} for speaker and every extra field."""
    fields = {"speaker": [r.get("speaker") for r in predictions]}
    for key in sorted({k for r in predictions for k in (r.get("extra") or {})}):
        fields[key] = [(r.get("extra") or {}).get(key) for r in predictions]
    out: dict = {}
    for name, values in fields.items():
        groups = group_values(name, values)
        if groups is None:
            continue
        table: dict = defaultdict(lambda: defaultdict(list))
        for row, group in zip(predictions, groups):
            table[group][row["system"]].append(row)
        out[name] = {g: {s: class_scores(rows, labels) for s, rows in sorted(systems.items())}
                     for g, systems in sorted(table.items())}
    return out


def group_values(field: str, values: list) -> list[str] | None:
    """Each row's group for a field: SNR-like numbers in dB bands, other numbers in quartiles
    when they vary a lot, text as is; None for fields not worth grouping (ids, nested data)."""
    if all(v is None for v in values) or any(isinstance(v, (dict, list)) for v in values):
        return None
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and len(numbers) == sum(v is not None for v in values):
        if "snr" in field.lower():
            return [_snr_band(v) for v in values]
        if len(set(numbers)) > 8:
            edges = np.quantile(numbers, [0.25, 0.5, 0.75])
            return [_quartile(v, edges) for v in values]
    groups = ["none" if v is None else str(v) for v in values]
    distinct = len(set(groups))
    if distinct > MAX_GROUPS or (field != "speaker" and distinct == len(groups) and distinct > 4):
        return None
    return groups


def _snr_band(value) -> str:
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return "clean"
    if value < SNR_EDGES[0]:
        return f"<{SNR_EDGES[0]} dB"
    for low, high in zip(SNR_EDGES, SNR_EDGES[1:]):
        if value < high:
            return f"{low}-{high} dB"
    return f">={SNR_EDGES[-1]} dB"


def _quartile(value, edges) -> str:
    if value is None:
        return "none"
    q = int(np.searchsorted(edges, value, side="right"))
    return f"Q{q + 1}"


def _labels_of(predictions: list[dict]) -> list[str]:
    """Label set from the rows' probabilities (in their order), then any other reference."""
    labels = list(predictions[0].get("probs") or {})
    for row in predictions:
        if row["emotion"] not in labels:
            labels.append(row["emotion"])
    return labels


def _check_prediction_rows(predictions: list[dict]) -> None:
    if not predictions:
        raise EvalError("No predictions to score.")
    for i, row in enumerate(predictions, 1):
        missing = [k for k in ("system", "emotion", "predicted") if not isinstance(row.get(k), str)]
        if missing:
            raise EvalError(f"Prediction {i} lacks {', '.join(missing)}.")


# ----------------------------------------------------------------------------- figures

def confusion_figure(scores: dict):
    """One heatmap per system, rows true labels, columns predicted, row-normalised colours."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(scores["systems"])
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[
        f"{n} (UA {scores['systems'][n]['ua']:.2f})" for n in names], horizontal_spacing=0.08)
    for col, name in enumerate(names, 1):
        s = scores["systems"][name]
        counts = np.array(s["confusion"], dtype=float)
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        columns = s["labels"] + (["other"] if counts.shape[1] > len(s["labels"]) else [])
        fig.add_trace(go.Heatmap(z=share, x=columns, y=s["labels"], text=counts.astype(int), texttemplate="%{text}",
                                 zmin=0, zmax=1, colorscale="Blues", showscale=col == len(names)), 1, col)
        fig.update_xaxes(title_text="predicted", row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(title_text="true", row=1, col=1)
    fig.update_layout(title="SER confusion matrices (counts; colour = share of the true class)",
                      width=max(500, 380 * len(names)), height=450)
    return fig


# ----------------------------------------------------------------------------- command line

def main(argv: list[str]) -> int:
    parser = argument_parser("python -m eval.ser", "SER accuracy (UA, WA, macro-F1, confusion) of every system.")
    parser.add_argument("manifest", nargs="?", help="JSONL or CSV manifest (audio, emotion, ...)")
    parser.add_argument("--out", required=True, help="output JSON; raw predictions go to OUT.predictions.jsonl")
    parser.add_argument("--systems", default=None,
                        help=f"comma-separated, from {','.join(SER_SYSTEMS)} "
                             "(default: speech_llm,text_only,standalone and neutral_aligned when its adapter exists)")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N rows")
    parser.add_argument("--split", default=AUTO_SPLIT, help="rows to evaluate (default: test if present, else all)")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--given-transcripts", action="store_true",
                        help="text_only reads the manifest's transcripts instead of ASR")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, help="override the LLM quantization")
    parser.add_argument("--rescore", metavar="PREDICTIONS.jsonl", help="score saved raw predictions; run no model")
    parser.add_argument("--no-figure", action="store_true", help="skip the confusion-matrix figure")
    args = parser.parse_args(argv)
    report, out = rescore_or_evaluate(parser, args, score_predictions, _evaluate)
    if not args.no_figure:
        report["figure"] = save_figure(confusion_figure(report), out.with_name(out.stem + ".confusion"))
    write_json(out, report)
    print(f"wrote {out}")
    return 0


def _evaluate(args, out: Path) -> dict:
    requested = _requested_systems(args.systems)
    rows, labels, notes, all_rows = evaluation_rows(args.manifest, config_labels(args.quantization),
                                                    split=args.split, limit=args.limit)
    system = load_system_from_args(args.quantization)
    systems, standalone = runnable_systems(system, requested, all_rows, labels, notes)
    predictions = run_ser(system, rows, systems, args.batch_size, labels=labels,
                          given_transcripts=args.given_transcripts, standalone=standalone)
    meta = run_meta(args.manifest, system, split=args.split, limit=args.limit, systems=systems)
    write_predictions(predictions_path(out), predictions, meta)
    return {**score_predictions(predictions, labels), "meta": meta,
            "metadata": metadata(args.manifest, system, split=args.split, limit=args.limit,
                                 given_transcripts=args.given_transcripts, systems=systems,
                                 predictions=str(predictions_path(out)), notes=notes)}


def runnable_systems(system, requested: list[str], all_rows: list, labels, notes: list[str]):
    """The requested systems that can run here, and the standalone model if one of them.

    Used by the command line and the app's Evaluate tab alike; what is dropped is noted."""
    systems = _available_systems(system, requested, notes)
    standalone = None
    if "standalone" in systems:
        standalone = standalone_model(system, all_rows, labels, notes)
        if standalone is None:
            systems.remove("standalone")
    if not systems:
        raise EvalError("No system left to evaluate: " + " ".join(notes))
    return systems, standalone


def _requested_systems(text: str | None) -> list[str]:
    if text is None:
        return list(DEFAULT_SYSTEMS) + ["neutral_aligned"]
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SER_SYSTEMS]
    if unknown or not names:
        raise EvalError(f"Unknown system {unknown[0] if unknown else text!r} in --systems; "
                        f"choose from {', '.join(SER_SYSTEMS)}.")
    return list(dict.fromkeys(names))


def _available_systems(system, requested: list[str], notes: list[str]) -> list[str]:
    if "neutral_aligned" in requested and system.neutral_adapter is None:
        requested = [s for s in requested if s != "neutral_aligned"]
        notes.append("neutral_aligned: no adapter at config neutral_adapter; skipped.")
    if not system.trained and ("speech_llm" in requested):
        notes.append("speech_llm: the adapter is fresh (untrained); its figures are chance-level plumbing checks.")
    return requested


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
