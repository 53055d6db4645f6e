"""Linear probe: how much emotion the speech tokens carry, whatever the LLM makes of them.

    python -m eval.probe MANIFEST --out probe.json
    python -m eval.probe --rescore probe.predictions.jsonl --out probe.json

Each clip's speech tokens (the adapter's output embeddings) are mean-pooled; a logistic
regression is trained on the manifest's train split and tested on its test split
(UA and WA, as in eval.ser). Compared: speech_llm against neutral_aligned (the paper:
78.4 % against 31.2 %), plus `backbone`, the mean-pooled frozen Whisper states, as the
reference for what the adapter starts from. A missing adapter is skipped with a note.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from semollama_core import QUANTIZATIONS
from semollama_core import Utterance

from .common import (rescore_or_evaluate, EvalError, argument_parser, batches, config_labels, label_set,
                     load_system_from_args, metadata, positive_int, predictions_path, progress_bar, read_rows,
                     run_cli, run_meta, write_json, write_jsonl, write_predictions)
from .ser import score_predictions

PROBE_SYSTEMS = ("speech_llm", "neutral_aligned", "backbone")


def pooled_embeddings(system, utterances: Sequence[Utterance], systems: Sequence[str],
                      batch_size: int = 16, progress=None) -> dict[str, np.ndarray]:
    """{system: [n, width]} mean-pooled speech tokens (backbone: mean-pooled frozen states)."""
    pooled: dict[str, list[np.ndarray]] = {s: [] for s in systems}
    bar = progress_bar(len(utterances), "probe features", progress)
    for batch in batches(list(utterances), batch_size):
        features = system.features_many([system.load(str(u.audio_path)) for u in batch], transcribe=False)
        for name in systems:
            if name == "backbone":
                pooled[name] += [f.backbone_states.mean(0) for f in features]
            else:
                # the frame tokens only: an emotion token (the head's posterior) would make it trivial
                adapter = system.adapter if name == "speech_llm" else system.neutral_adapter
                skip = 1 if adapter is not None and adapter.config.emotion_token else 0
                pooled[name] += [e[skip:].float().mean(0).cpu().numpy()
                                 for e in system.speech_embeddings(features, system=name)]
        bar.update(len(batch))
    bar.close()
    return {name: np.stack(rows) for name, rows in pooled.items()}


def probe_probabilities(train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, labels: Sequence[str],
                        seed: int = 0) -> list[dict[str, float]]:
    """Standardised features -> class-balanced logistic regression; test probabilities per label
    (0 for a label absent from the train split)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                               random_state=seed))
    probe.fit(train_x, train_y)
    classes = [str(c) for c in probe.classes_]
    return [{l: round(float(row[classes.index(l)]), 6) if l in classes else 0.0 for l in labels}
            for row in probe.predict_proba(test_x)]


def run_probe(system, train: Sequence[Utterance], test: Sequence[Utterance], systems: Sequence[str] = PROBE_SYSTEMS,
              batch_size: int = 16, progress=None, labels: Sequence[str] | None = None) -> list[dict]:
    """Raw probe predictions on the test rows, one dict per utterance per system."""
    labels = list(labels or dict.fromkeys(u.emotion for u in [*train, *test]))
    if len({u.emotion for u in train}) < 2:
        raise EvalError("The probe's train split needs at least two emotion labels.")
    train_x = pooled_embeddings(system, train, systems, batch_size, progress)
    test_x = pooled_embeddings(system, test, systems, batch_size, progress)
    rows = []
    for name in systems:
        probs = probe_probabilities(train_x[name], [u.emotion for u in train], test_x[name], labels)
        rows += [{"audio": str(u.audio_path), "speaker": u.speaker, "emotion": u.emotion, "split": u.split,
                  "system": name, "predicted": max(p, key=p.get), "probs": p, "extra": dict(u.extra)}
                 for u, p in zip(test, probs)]
    return rows


def main(argv: list[str]) -> int:
    parser = argument_parser("python -m eval.probe", "Linear probe on mean-pooled speech tokens "
                             "(train split -> test split), speech_llm against neutral_aligned.")
    parser.add_argument("manifest", nargs="?", help="manifest with split train and test rows")
    parser.add_argument("--out", required=True, help="output JSON; raw predictions go to OUT.predictions.jsonl")
    parser.add_argument("--limit", type=positive_int, help="use only the first N train and N test rows")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--quantization", choices=QUANTIZATIONS, help="override the LLM quantization")
    parser.add_argument("--rescore", metavar="PREDICTIONS.jsonl", help="score saved raw predictions; run no model")
    args = parser.parse_args(argv)
    report, out = rescore_or_evaluate(parser, args, score_predictions, _evaluate)
    write_json(out, report)
    print(f"wrote {out}")
    return 0


def _evaluate(args, out: Path) -> dict:
    rows = read_rows(args.manifest)
    labels = label_set(rows, config_labels(args.quantization))
    train = [u for u in rows if u.split == "train" and u.emotion in labels][: args.limit]
    test = [u for u in rows if u.split == "test" and u.emotion in labels][: args.limit]
    if not train or not test:
        raise EvalError(f"{args.manifest}: the probe needs rows with split 'train' and split 'test' "
                        f"(found {len(train)} and {len(test)}).")
    system = load_system_from_args(args.quantization)
    notes = []
    systems = list(PROBE_SYSTEMS)
    if system.neutral_adapter is None:
        systems.remove("neutral_aligned")
        notes.append("neutral_aligned: no adapter at config neutral_adapter; skipped.")
    if not system.trained:
        notes.append("speech_llm: the adapter is fresh (untrained); the probe measures a random projection.")
    predictions = run_probe(system, train, test, systems, args.batch_size, labels=labels)
    meta = run_meta(args.manifest, system, limit=args.limit, systems=systems)
    write_predictions(predictions_path(out), predictions, meta)
    return {**score_predictions(predictions, labels), "train_n": len(train), "test_n": len(test), "notes": notes,
            "meta": meta,
            "metadata": metadata(args.manifest, system, limit=args.limit, systems=systems,
                                 predictions=str(predictions_path(out)))}


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
