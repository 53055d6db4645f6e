"""How far one clip's prosody can name the emotion of an unseen synthetic voice, and how far it
can once the voice's own neutral is known (dev only).

EXPRESSIVE_SPEECH.md states every cue relative to "the same speaker's neutral rendering of the
same sentence". The shipped head reads one clip; it never hears the voice's neutral. This script
measures what that costs, with the plainest prosodic features and no model of ours at all:

- `clip`: utterance prosody of the clip alone: F0 median, spread, range and slope (semitones),
  speaking rate, pause share, energy dynamics, and level and brightness;
- `voice_neutral`: the same features minus the mean of that voice's other neutral clips
  (speaker normalisation, as a calibration recording would give);
- `pair_neutral`: minus the same voice's neutral rendering of the same sentence (the reference
  the conventions are written against; an upper bound no deployed model has). A corpus holds one
  rendering per voice, sentence and emotion, so the neutral clips have no reference of their
  own: this set scores happy, sad and angry only (3 classes, chance 1/3).

It extends `scripts/v2_reference_dev.py` (eight functionals, logistic regression only, references
built from all of a voice's clips, which include the label's siblings): this one adds level,
brightness, pauses and the final pitch movement, a tree model, and references made of neutral
clips only, the way the conventions state them.

Each set trains a logistic regression and a gradient-boosted tree on the train split's voices
and is scored on the dev split's voices (disjoint people), UA with a 95 % bootstrap interval
that resamples sentences. The test split is not read.

    python scripts/synth_ceiling_dev.py data/synth_v2/manifest.jsonl --out results/synth_ceiling_dev.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.common import run_meta, ua_bootstrap_ci, write_json  # noqa: E402
from semollama_core import load_audio  # noqa: E402
from semollama_core.metrics import unweighted_accuracy  # noqa: E402
from semollama_core.model.prosody import pitch_track  # noqa: E402

FEATURES = ("f0_median_st", "f0_sd_st", "f0_range_st", "f0_slope_st_per_s", "f0_final_st", "rate_syll_per_s",
            "pause_share", "energy_sd_db", "energy_range_db", "level_dbfs", "brightness")
SPLITS = ("train", "dev")


def syllables(text: str) -> int:
    """Vowel groups per word, at least one: a rough syllable count (English)."""
    return sum(max(1, len(re.findall(r"[aeiouy]+", w))) for w in re.findall(r"[a-z']+", text.lower())) or 1


def clip_features(audio: np.ndarray, transcript: str, rate: int = 16000) -> np.ndarray:
    f0, _ = pitch_track(audio, rate)
    hop = 320
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(audio, (0, hop)), hop)[::hop][: len(f0)]
    energy = 10 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-10)
    active = energy > energy.max() - 35
    span = np.flatnonzero(active)
    first, last = (span[0], span[-1]) if span.size else (0, len(energy) - 1)
    seconds = (last - first + 1) * hop / rate
    voiced = f0 > 0
    st = 12 * np.log2(np.maximum(f0[voiced], 1.0) / 100.0) if voiced.any() else np.zeros(1)
    t = np.flatnonzero(voiced) * hop / rate if voiced.any() else np.zeros(1)
    slope = float(np.polyfit(t, st, 1)[0]) if st.size > 2 and np.ptp(t) > 0 else 0.0
    tail = st[-max(1, st.size // 5):]
    spectrum = np.abs(np.fft.rfft(audio[first * hop: (last + 1) * hop])) ** 2
    cut = int(2000 / (rate / 2) * (len(spectrum) - 1))
    inside = energy[first: last + 1]
    return np.array([
        np.median(st), np.std(st), np.percentile(st, 90) - np.percentile(st, 10), slope,
        float(np.median(tail) - np.median(st)), syllables(transcript) / max(seconds, 0.1),
        float(np.mean(~active[first: last + 1])), float(np.std(inside)),
        float(np.percentile(inside, 95) - np.percentile(inside, 10)),
        float(10 * np.log10(np.mean(np.square(audio[first * hop: (last + 1) * hop], dtype=np.float64)) + 1e-10)),
        float(np.log10((spectrum[cut:].sum() + 1e-10) / (spectrum.sum() + 1e-10))),
    ])


def load_rows(manifest: Path) -> list[dict]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split") in SPLITS]
    from tqdm import tqdm
    for r in tqdm(rows, desc="prosody", unit="clip"):
        r["x"] = clip_features(load_audio(manifest.parent / r["audio"]), r.get("transcript", ""))
    return rows


def relative(rows: list[dict], key) -> np.ndarray:
    """Each row's features minus the mean of the neutral rows sharing key(row), the row itself left out."""
    groups = defaultdict(list)
    for i, r in enumerate(rows):
        if r["emotion"] == "neutral":
            groups[key(r)].append(i)
    out = []
    for i, r in enumerate(rows):
        others = [j for j in groups.get(key(r), []) if j != i]
        out.append(r["x"] - np.mean([rows[j]["x"] for j in others], axis=0) if others else None)
    return out


def score(x_train, y_train, x_dev, y_dev, groups, labels) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    models = {"logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced")),
              "boosted_trees": HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05,
                                                              class_weight="balanced", random_state=0)}
    out = {}
    for name, model in models.items():
        predicted = list(model.fit(x_train, y_train).predict(x_dev))
        out[name] = {"ua": round(unweighted_accuracy(y_dev, predicted, labels), 4),
                     "ua_ci95": ua_bootstrap_ci(y_dev, predicted, labels, groups=groups)}
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path, help="a synthetic corpus manifest (train and dev splits are read)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = load_rows(args.manifest)
    labels = sorted({r["emotion"] for r in rows})
    sets = {"clip": [r["x"] for r in rows],
            "voice_neutral": relative(rows, lambda r: r["person"]),
            "pair_neutral": relative(rows, lambda r: (r["person"], r["sentence_id"]))}
    report = {"meta": run_meta(args.manifest), "features": list(FEATURES), "labels": labels, "sets": {}}
    for name, x in sets.items():
        keep = {s: [i for i, r in enumerate(rows) if r["split"] == s and x[i] is not None] for s in SPLITS}
        xs = {s: np.array([x[i] for i in keep[s]]) for s in SPLITS}
        ys = {s: [rows[i]["emotion"] for i in keep[s]] for s in SPLITS}
        groups = [str(rows[i].get("sentence_id")) for i in keep["dev"]]
        classes = sorted(set(ys["dev"]))
        report["sets"][name] = {"classes": classes, "chance": round(1 / len(classes), 4),
                                "n_train": len(ys["train"]), "n_dev": len(ys["dev"]),
                                **score(xs["train"], ys["train"], xs["dev"], ys["dev"], groups, labels)}
        print(name, json.dumps(report["sets"][name]))
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
