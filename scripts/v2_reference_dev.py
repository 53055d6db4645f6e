"""How much of corpus v2's emotion does one clip reveal, and how much needs the voice's own
baseline? A dev-only measurement behind the model card's reading of the v2 test figure.

In corpus v2 an emotion is a shift of pitch, pitch range, rate and effort relative to the
voice's own neutral (`corpus/plan.py`, EXPRESSIVE_SPEECH.md), and every voice also gets a
session pitch (+-1.5 st) and tempo (0.75-1.33) shared by its four emotions. A listener who
hears one clip of an unknown voice cannot tell a high voice from a happy one. This script
fits the same shallow classifier (standardised logistic regression) on a few prosodic
functionals of each clip, measured from the audio, twice:

- `per_clip`: the clip's own functionals, as the model sees them;
- `voice_normalised`: the same functionals minus the mean of that voice's clips of the
  *other* sentences (per-speaker normalisation, standard in SER; label-free, since every
  sentence is spoken in all four emotions);
- `session_normalised`: minus the mean of the same voice's four clips of the same sentence
  (one per emotion, so the reference is label-free but knows the session's pitch and tempo):
  an upper reference that no single-clip model can have.

It fits on the train rows and scores the dev rows (unseen sentences and persons); test rows
are never read. UA with a 95 % bootstrap interval over dev sentences.

    python scripts/v2_reference_dev.py data/synth_v2/manifest.jsonl --out results/v2_reference_dev.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval.common import ua_bootstrap_ci  # noqa: E402
from semollama_core.metrics import unweighted_accuracy  # noqa: E402
from semollama_core.model.audio import SAMPLE_RATE, load_audio  # noqa: E402
from semollama_core.model.prosody import pitch_track  # noqa: E402

LABELS = ("neutral", "happy", "sad", "angry")
NAMES = ("f0_median_st", "f0_sd_st", "f0_span_st", "voiced_share", "seconds_per_char", "energy_sd_db",
         "energy_span_db", "f0_slope_st_per_s")


def functionals(audio: np.ndarray, transcript: str) -> np.ndarray:
    """Prosody of one clip: pitch level, range and slope (semitones re 100 Hz), voicing, rate
    (seconds per character of the transcript) and energy dynamics; no absolute level, no spectrum."""
    f0, _ = pitch_track(audio)
    voiced = f0 > 0
    st = 12 * np.log2(f0[voiced] / 100.0) if voiced.sum() >= 3 else np.zeros(3)
    frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)
    db = 10 * np.log10(frames.astype(np.float64).var(axis=1) + 1e-10)
    loud = db[db > db.max() - 40]
    t = np.flatnonzero(voiced) * 0.02
    slope = np.polyfit(t, st, 1)[0] if voiced.sum() >= 3 else 0.0
    return np.array([np.median(st), st.std(), np.percentile(st, 95) - np.percentile(st, 5), voiced.mean(),
                     len(audio) / SAMPLE_RATE / max(1, len(transcript)), loud.std(),
                     np.percentile(loud, 95) - np.percentile(loud, 5), slope])


def normalised(x: np.ndarray, rows: list[dict], same_sentence: bool) -> np.ndarray:
    """Each row minus the mean of its voice's rows of the same sentence (`same_sentence`) or
    of the other sentences (zero where there are none). A voice lies in one split only."""
    by_voice = defaultdict(list)
    for i, r in enumerate(rows):
        by_voice[r["speaker"]].append(i)
    out = np.zeros_like(x)
    for i, r in enumerate(rows):
        ref = [j for j in by_voice[r["speaker"]] if (rows[j]["sentence_id"] == r["sentence_id"]) == same_sentence]
        if ref:
            out[i] = x[i] - x[ref].mean(axis=0)
    return out


def fit_and_score(x_train, y_train, x_dev, y_dev, sentences) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    model.fit(x_train, y_train)
    pred = model.predict(x_dev).tolist()
    return {"ua": round(unweighted_accuracy(y_dev.tolist(), pred, LABELS), 3),
            "ua_ci95": [round(v, 3) for v in ua_bootstrap_ci(y_dev.tolist(), pred, LABELS, sentences.tolist())],
            "n": int(len(y_dev))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    root = Path(args.manifest).parent
    rows = [json.loads(line) for line in open(args.manifest) if line.strip()]
    rows = [r for r in rows if r["split"] in ("train", "dev") and r["emotion"] in LABELS]
    x = np.stack([functionals(load_audio(root / r["audio"]), r["transcript"])
                  for r in tqdm(rows, desc="prosody", unit="clip")])
    y = np.array([r["emotion"] for r in rows])
    train = np.array([r["split"] == "train" for r in rows])
    sentences = np.array([r["sentence_id"] for r in rows])
    variants = {"per_clip": x, "voice_normalised": normalised(x, rows, same_sentence=False),
                "session_normalised": normalised(x, rows, same_sentence=True)}
    result = {"command": "python scripts/v2_reference_dev.py " + " ".join(argv or sys.argv[1:]),
              "features": list(NAMES), "train_n": int(train.sum()), "dev_voices": len({r["speaker"] for r, t in
                                                                                   zip(rows, train) if not t})}
    for name, feats in variants.items():
        result[name] = fit_and_score(feats[train], y[train], feats[~train], y[~train], sentences[~train])
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
