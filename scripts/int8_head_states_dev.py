"""Can the other-language emotion head read the language ID's own int8 Whisper base pass instead of
a second, float32 pass (what it was trained on)? The router already encodes every clip with Whisper
base in int8 for p(English); reusing those states saves the float32 encoder (about 0.1 s a routed
clip on 2 cores) and its memory.

Dev rows only, never test: every clip the shipped router sends to the other-language adapter among
the Polish dev speaker (m3) and the synthetic v2 dev rows. For each, the head alone (emotion_head)
and speech_llm label scoring are run twice, on float32 and on int8 pooled states: label agreement,
UA of each with a 95 % clip-bootstrap interval, and the paired UA difference (int8 - float32).

    python scripts/int8_head_states_dev.py --out results/router_dev/int8_head_states_dev.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval.common import paired_ua_difference, run_meta, ua_bootstrap_ci  # noqa: E402
from semollama_core import PromptInput, load_system, unweighted_accuracy  # noqa: E402
from semollama_core.config import EMBEDDED_WHISPER_BASE  # noqa: E402
from semollama_core.corpus.manifest import iter_manifest  # noqa: E402
from semollama_core.model.backbone import WhisperBackbone, pooled_states  # noqa: E402

SETS = {"polish_dev": "data/real_split/manifest.jsonl", "synth_v2_dev": "data/synth_v2/manifest.jsonl"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    system = load_system()
    if system.language_id is None:
        raise SystemExit("No language router here (the shipped other-language adapter or base's wheels are missing).")
    float32 = WhisperBackbone(EMBEDDED_WHISPER_BASE, system.config.threads)
    labels = list(system.config.labels)
    report = {"sets": {}}
    for name, manifest in SETS.items():
        root = Path(manifest).resolve().parent
        rows = [u for u in iter_manifest(manifest, split="dev") if u.emotion in labels]
        began, scored = time.time(), []
        for utt in rows:
            audio = system.load(str(utt.audio_path))
            features = system.features(audio, transcribe=False)
            if not system.routed(features):
                continue
            item = {"audio": str(utt.audio_path.relative_to(root)), "emotion": utt.emotion,
                    "p_english": round(features.p_english, 4)}
            int8 = features.head_states
            for kind, states in (("float32", pooled_states(float32.encode(audio))), ("int8", int8)):
                features.head_states = states
                head = system.emotion_head([features])[0]
                item[f"{kind}_head"] = max(head, key=head.get)
                item[f"{kind}_speech_llm"] = system.predict_emotions([PromptInput("speech_llm", features)])[0].label
            scored.append(item)
        refs = [r["emotion"] for r in scored]
        clips = [r["audio"] for r in scored]
        summary = {"dev_rows": len(rows), "routed": len(scored), "seconds": round(time.time() - began)}
        for system_name in ("head", "speech_llm"):
            a, b = ([r[f"{k}_{system_name}"] for r in scored] for k in ("int8", "float32"))
            summary[system_name] = {
                "same_label": round(float(np.mean([x == y for x, y in zip(a, b)])), 4),
                "ua_float32": round(unweighted_accuracy(refs, b, labels), 4),
                "ua_float32_ci95": ua_bootstrap_ci(refs, b, labels, clips),
                "ua_int8": round(unweighted_accuracy(refs, a, labels), 4),
                "ua_int8_ci95": ua_bootstrap_ci(refs, a, labels, clips),
                "int8_minus_float32": paired_ua_difference(refs, a, b, labels)}
        report["sets"][name] = {**summary, "clips": scored}
        print(name, {k: v for k, v in summary.items()}, flush=True)
    report["meta"] = run_meta(None, system)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
