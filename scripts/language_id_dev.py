"""Could a router send non-English speech to a head on Whisper base, and at what threshold? How
reliably Whisper base (embedded, `embedded:whisper-base`) tells English from other languages on
short acted clips, read as the shipped router reads it: WhisperBackbone.english_probability, one
decoder step on the clip's real-length encoder states, from base in int8 on one thread (the
pipeline's `language_id`); beside it the same reading in float32 (the states the other-language
head pools), and how often the two route a clip the same way. Train and dev rows only, never
test: RAVDESS (English, actors 1-12), the Polish speakers m1-m3 (single words of about 1 s), and
the synthetic v2 dev rows. It reports p(English) quantiles and, per threshold, the share of each
set kept as English.

With `--route EN.predictions.jsonl OTHER.predictions.jsonl` (two eval.ser runs on the same dev
rows) it also scores a simulated router: each clip takes EN's prediction where p(English) is at
least --threshold and OTHER's elsewhere; UA per dev set and system, with a 95 % clip-bootstrap
interval, beside each run's own.

    python scripts/language_id_dev.py --out results/language_id_dev.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval.common import read_jsonl, ua_bootstrap_ci  # noqa: E402
from semollama_core import load_audio, unweighted_accuracy  # noqa: E402
from semollama_core.config import CORE_LABELS, EMBEDDED_WHISPER_BASE  # noqa: E402
from semollama_core.corpus.manifest import iter_manifest  # noqa: E402
from semollama_core.model.backbone import WhisperBackbone  # noqa: E402

SETS = {"ravdess": ("data/ravdess_split/manifest.jsonl", ("train", "dev")),
        "polish": ("data/real_split/manifest.jsonl", ("train", "dev")),
        "synth_v2_dev": ("data/synth_v2/manifest.jsonl", ("dev",))}
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--threshold", type=float, default=0.5, help="p(English) below which a clip is routed")
    parser.add_argument("--route", nargs=2, action="append", default=[], metavar=("EN", "OTHER"),
                        help="predictions for English and for other clips (repeatable)")
    args = parser.parse_args(argv)
    heard: dict[str, float] = {}
    base = WhisperBackbone(EMBEDDED_WHISPER_BASE)                                   # float32, the heads'
    language_id = WhisperBackbone(EMBEDDED_WHISPER_BASE, 1, compute_type="int8")    # the router's
    report = {"command": "python scripts/language_id_dev.py " + " ".join(argv),
              "reads": "WhisperBackbone.english_probability on the real-length encoder states (the shipped router's)"}
    for name, (manifest, splits) in SETS.items():
        rows = [u for u in iter_manifest(manifest) if u.split in splits]
        p_en, p_f32, spent, spent_f32 = [], [], 0.0, 0.0
        for utt in rows:
            audio = load_audio(utt.audio_path)
            start = time.perf_counter()
            p = language_id.english_probability(language_id.encode(audio))
            spent += time.perf_counter() - start
            start = time.perf_counter()
            p_f32.append(base.english_probability(base.encode(audio)))
            spent_f32 += time.perf_counter() - start
            heard[str(Path(utt.audio_path).resolve())] = p
            p_en.append(p)
        same = np.mean((np.array(p_en) >= args.threshold) == (np.array(p_f32) >= args.threshold))
        report[name] = {"n": len(rows), "splits": list(splits),
                        "p_english_quantiles": dict(zip(("min", "5%", "25%", "50%", "75%", "95%", "max"),
                                                        np.round(np.quantile(p_en, [0, .05, .25, .5, .75, .95, 1]), 3).tolist())),
                        "kept_as_english_at": {str(t): round(float(np.mean(np.array(p_en) >= t)), 3) for t in THRESHOLDS},
                        "seconds_per_clip_encoder_and_language_id": round(spent / max(1, len(rows)), 3),
                        "float32": {"same_route_at_threshold": round(float(same), 4),
                                    "largest_p_english_difference": round(float(np.max(np.abs(np.array(p_en) - p_f32))), 4),
                                    "seconds_per_clip": round(spent_f32 / max(1, len(rows)), 3)}}
        print(name, report[name], flush=True)
    report["routed"] = [route(english, other, heard, args.threshold) for english, other in args.route]
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def route(english: str, other: str, heard: dict[str, float], threshold: float) -> dict:
    """UA of EN's, OTHER's and the routed predictions on the clips both runs scored."""
    runs = {"english": read_jsonl(english), "other": read_jsonl(other)}
    keyed = {name: {(str(Path(r["audio"]).resolve()), r["system"]): r for r in rows} for name, rows in runs.items()}
    out = {"english": english, "other": other, "threshold": threshold, "systems": {}}
    for (audio, system), row in keyed["english"].items():
        if (audio, system) not in keyed["other"] or audio not in heard or row["emotion"] not in CORE_LABELS:
            continue
        pick = row if heard[audio] >= threshold else keyed["other"][audio, system]
        cell = out["systems"].setdefault(system, {"truth": [], "english": [], "other": [], "routed": []})
        for name, value in (("truth", row["emotion"]), ("english", row["predicted"]),
                            ("other", keyed["other"][audio, system]["predicted"]), ("routed", pick["predicted"])):
            cell[name].append(value)
    for system, cell in out["systems"].items():
        truth, labels = cell.pop("truth"), CORE_LABELS
        groups = [f"clip:{i}" for i in range(len(truth))]
        out["systems"][system] = {"n": len(truth), **{
            name: {"ua": round(unweighted_accuracy(truth, preds, labels), 3),
                   "ua_ci95": ua_bootstrap_ci(truth, preds, labels, groups)} for name, preds in cell.items()}}
    print(json.dumps(out["systems"]), flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
