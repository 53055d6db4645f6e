"""Could a router send non-English speech to a head on Whisper base? How reliably Whisper base
(embedded, `embedded:whisper-base`) tells English from other languages on short acted clips:
faster-whisper's detect_language (one padded 30 s window) on the dev rows of RAVDESS (English,
actors 11-12) and of the Polish speakers (m3, single words of about 1 s). Dev rows only.

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
from semollama_core import load_audio  # noqa: E402
from semollama_core.config import EMBEDDED_WHISPER_BASE  # noqa: E402
from semollama_core.corpus.manifest import iter_manifest  # noqa: E402
from semollama_core.model.backbone import WhisperBackbone  # noqa: E402

DEV_SETS = {"ravdess_dev": "data/ravdess_split/manifest.jsonl", "polish_dev": "data/real_split/manifest.jsonl"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
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
            p_en.append(dict(probs).get("en", 0.0))
        report[name] = {"n": len(rows), "detected": dict(detected.most_common()),
                        "p_en_median": round(sorted(p_en)[len(p_en) // 2], 3),
                        "seconds_per_clip": round(spent / max(1, len(rows)), 3)}
        print(name, report[name], flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
