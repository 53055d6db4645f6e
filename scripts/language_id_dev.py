"""Could a router send non-English speech to a head on Whisper base? How reliably Whisper base
(embedded, `embedded:whisper-base`) tells English from other languages on short acted clips:
faster-whisper's detect_language (one padded 30 s window) on the dev rows of RAVDESS (English,
actors 11-12) and of the Polish speakers (m3, single words of about 1 s). Dev rows only.

With `--route EN.predictions.jsonl OTHER.predictions.jsonl` (two eval.ser runs on the same dev
rows) it also scores a simulated router: each clip takes EN's prediction where Whisper base
hears English and OTHER's elsewhere; UA per dev set and system, with a 95 % clip-bootstrap
interval, beside each run's own.

    python scripts/language_id_dev.py --out results/language_id_dev.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval.common import read_jsonl, ua_bootstrap_ci  # noqa: E402
from semollama_core import load_audio, unweighted_accuracy  # noqa: E402
from semollama_core.config import CORE_LABELS, EMBEDDED_WHISPER_BASE  # noqa: E402
from semollama_core.corpus.manifest import iter_manifest  # noqa: E402
from semollama_core.model.backbone import WhisperBackbone  # noqa: E402

DEV_SETS = {"ravdess_dev": "data/ravdess_split/manifest.jsonl", "polish_dev": "data/real_split/manifest.jsonl"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--route", nargs=2, action="append", default=[], metavar=("EN", "OTHER"),
                        help="predictions for English and for other clips (repeatable)")
    args = parser.parse_args(argv)
    heard: dict[str, str] = {}
    whisper = WhisperBackbone(EMBEDDED_WHISPER_BASE)._whisper
    report = {"command": "python scripts/language_id_dev.py " + " ".join(argv)}
    for name, manifest in DEV_SETS.items():
        rows = [u for u in iter_manifest(manifest) if u.split == "dev"]
        detected, p_en, spent = Counter(), [], 0.0
        for utt in rows:
            audio = load_audio(utt.audio_path)
            start = time.perf_counter()
            language, _, probs = whisper.detect_language(audio=audio)
            spent += time.perf_counter() - start
            detected[language] += 1
            heard[str(Path(utt.audio_path).resolve())] = language
            p_en.append(dict(probs).get("en", 0.0))
        report[name] = {"n": len(rows), "detected": dict(detected.most_common()),
                        "p_en_median": round(sorted(p_en)[len(p_en) // 2], 3),
                        "seconds_per_clip": round(spent / max(1, len(rows)), 3)}
        print(name, report[name], flush=True)
    report["routed"] = [route(english, other, heard) for english, other in args.route]
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def route(english: str, other: str, heard: dict[str, str]) -> dict:
    """UA of EN's, OTHER's and the routed predictions on the clips both runs scored."""
    runs = {"english": read_jsonl(english), "other": read_jsonl(other)}
    keyed = {name: {(str(Path(r["audio"]).resolve()), r["system"]): r for r in rows} for name, rows in runs.items()}
    out = {"english": english, "other": other, "systems": {}}
    for (audio, system), row in keyed["english"].items():
        if (audio, system) not in keyed["other"] or audio not in heard or row["emotion"] not in CORE_LABELS:
            continue
        pick = row if heard[audio] == "en" else keyed["other"][audio, system]
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
