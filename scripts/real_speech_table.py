"""UA per corpus and system from eval.ser raw predictions, with 95 % bootstrap intervals that
resample clips (RAVDESS and CREMA-D speak two and one sentences, so resampling sentences, as
eval.ser's ua_ci95 does, has too few units there), and the CREMA-D clips one by one.

    python scripts/real_speech_table.py results/ravdess_test_ser.predictions.jsonl results/real_ser.predictions.jsonl
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from eval.common import paired_ua_difference, ua_bootstrap_ci  # noqa: E402
from semollama_core import unweighted_accuracy  # noqa: E402

LABELS = ("neutral", "happy", "sad", "angry")


def clip_ci(truth, pred):
    """95 % interval of UA resampling clips (eval.common's, on clips as units)."""
    return [round(v, 3) for v in ua_bootstrap_ci(truth, pred, LABELS, [f"clip:{i}" for i in range(len(truth))])]


def paired_difference(a, b, truth):
    """UA(a) - UA(b) on the same clips, with a 95 % interval resampling clips."""
    diff = paired_ua_difference(truth, a, b, LABELS)
    return [round(diff["difference"], 3), *(round(v, 3) for v in diff["ci95"])]


def main(paths):
    table = defaultdict(lambda: defaultdict(list))
    cremad = []
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            if r.get("emotion") not in LABELS:
                continue
            corpus = (r.get("extra") or {}).get("corpus") or r.get("corpus") or "?"
            table[corpus][r["system"]].append((r["emotion"], r["predicted"], r["audio"]))
            if corpus == "crema-d":
                cremad.append((r["audio"], r["system"], r["emotion"], r["predicted"]))
    out = {}
    for corpus, systems in sorted(table.items()):
        for system, rows in sorted(systems.items()):
            t, p, _ = zip(*rows)
            out.setdefault(corpus, {})[system] = {"ua": round(unweighted_accuracy(t, p, LABELS), 3),
                                                 "ua_ci95_clips": clip_ci(t, p), "n": len(t),
                                                 "labels": sorted(set(t))}
    for corpus, systems in sorted(table.items()):
        if "speech_llm" not in systems:
            continue
        ref = {audio: (t, p) for t, p, audio in systems["speech_llm"]}
        for other, rows in sorted(systems.items()):
            if other == "speech_llm":
                continue
            common = [audio for _, _, audio in rows if audio in ref]
            theirs = {audio: p for _, p, audio in rows}
            out[corpus][other]["speech_llm_minus_this"] = paired_difference(
                [ref[x][1] for x in common], [theirs[x] for x in common], [ref[x][0] for x in common])
    print(json.dumps(out, indent=1))
    for row in sorted(cremad):
        print("\t".join(row))


if __name__ == "__main__":
    main(sys.argv[1:])
