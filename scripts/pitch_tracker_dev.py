"""Does the pitch tracker hear a voice through the corpus channel? A measurement behind
prosody channel v2 (`model/prosody.py`: PROSODY_VERSION).

For corpus v2 train clips (seeded sample), it renders each clip's speech before the channel
(as `synth` does) and after it, tracks both, and compares the median F0 of the degraded clip
with the clean one, per noise kind, for each prosody version's tracker: v1 (no high-pass,
voicing wherever the correlation is high) and v2 (50 Hz high-pass, voicing only at a true
autocorrelation peak). The clean reference is the v1 track of the clean speech. Needs the
corpus voices (`scripts/install_corpus_voices.sh`); reads no dev or test clip.

    python scripts/pitch_tracker_dev.py --clips 90 --out results/pitch_tracker_dev.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from semollama_core.corpus import channel  # noqa: E402
from semollama_core.corpus.synth import SynthOptions, _babble, _render_speech, load_sentences, plan_corpus  # noqa: E402
from semollama_core.corpus.voices import ENGINES  # noqa: E402
from semollama_core.model.prosody import PITCH_TRACKERS, pitch_track  # noqa: E402


def median_st(f0: np.ndarray) -> float:
    voiced = f0[f0 > 0]
    return float(np.median(12 * np.log2(voiced / 100.0))) if voiced.size > 3 else float("nan")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=90)
    parser.add_argument("--kinds", default="brown,pink,none", help="noise kinds to sample (none: no noise)")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    kinds = [None if k == "none" else k for k in args.kinds.split(",")]
    options = SynthOptions(engines=ENGINES)
    jobs = [j for j in plan_corpus(options, load_sentences(), ENGINES)
            if j.split == "train" and j.params.channel.noise_kind in kinds]
    picked = [jobs[i] for i in np.random.default_rng(args.seed).permutation(len(jobs))[:args.clips]]
    rows = defaultdict(list)
    for job in tqdm(picked, desc="clips", unit="clip"):
        with tempfile.TemporaryDirectory() as workdir:
            clean = _render_speech(job, workdir)
            degraded = channel.apply_channel(clean, job.params.channel, _babble(job.params, workdir))
        reference = median_st(pitch_track(clean, **PITCH_TRACKERS[1])[0])
        row = {}
        for version, tracker in PITCH_TRACKERS.items():
            f0 = pitch_track(degraded, **tracker)[0]
            row[f"v{version}_error_st"] = abs(median_st(f0) - reference)
            row[f"v{version}_voiced_share"] = float((f0 > 0).mean())
            row[f"v{version}_clean_frames_moved"] = float(np.mean(np.abs(pitch_track(clean, **tracker)[0]
                                                                      - pitch_track(clean, **PITCH_TRACKERS[1])[0]) > 1))
        rows[job.params.channel.noise_kind or "none"].append(row)
    report = {"command": "python scripts/pitch_tracker_dev.py " + " ".join(argv), "split": "train",
              "by_noise": {}}
    for kind, items in rows.items():
        summary = {"n": len(items)}
        for version in PITCH_TRACKERS:
            errors = np.array([r[f"v{version}_error_st"] for r in items])
            summary[f"v{version}"] = {
                "median_error_st": round(float(np.nanmedian(errors)), 3),
                "share_off_by_1_st": round(float(np.mean(~(errors <= 1))), 3),
                "median_voiced_share": round(float(np.median([r[f"v{version}_voiced_share"] for r in items])), 3),
                "clean_frames_moved": round(float(np.median([r[f"v{version}_clean_frames_moved"] for r in items])), 3)}
        report["by_noise"][kind] = summary
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["by_noise"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
