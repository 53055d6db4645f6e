"""RAVDESS with its "calm" clips relabelled "neutral" for the training actors: a dev-only variant.

RAVDESS records neutral once per statement and repetition (4 clips an actor) and calm at two
intensities (8 clips). Many RAVDESS studies merge calm into neutral. This writes a copy of the
shared manifest, and its audio, under OUT/ravdess/ (the folder name keeps the mix's source name
`ravdess`, so the mixes' dev rows match clip for clip): calm clips of the actors that
ravdess_splits.json puts in train become "neutral" (column `calm_as_neutral`); every other calm
clip is dropped, so dev and held-back actors are unchanged. Then:

    python scripts/ravdess_calm_dev.py --out data/calm_src
    python -m semollama_core mix --out data/mix_real_calm data/synth_v2/manifest.jsonl \\
        data/calm_src/ravdess/manifest.jsonl data/real/manifest.jsonl --augment 1 \\
        --speaker-splits semollama_core/corpus/resources/ravdess_splits.json \\
        --speaker-splits semollama_core/corpus/resources/real_splits.json
    python scripts/paired_head_dev.py data/mix_real/manifest.jsonl data/mix_real_calm/manifest.jsonl \\
        --adapter assets/speech_llm --out results/calm_as_neutral_paired_dev.json

OUT must be an ignored folder (data/): RAVDESS is CC BY-NC-SA and never enters the repository.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

SPLITS = Path(__file__).resolve().parent.parent / "semollama_core/corpus/resources/ravdess_splits.json"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ravdess", default="../shared/data/ravdess/manifest.jsonl")
    parser.add_argument("--out", required=True, help="folder; the manifest and audio go to OUT/ravdess/")
    args = parser.parse_args(argv)
    source = Path(args.ravdess)
    if not source.is_file():
        print(f"error: {source} not found (RAVDESS lives in ../shared/data/ravdess)", file=sys.stderr)
        return 2
    splits = json.loads(SPLITS.read_text())["splits"]
    out = Path(args.out) / "ravdess"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for line in source.read_text().splitlines():
        row = json.loads(line)
        if row["emotion"] == "calm":
            if splits.get(row["speaker"]) != "train":
                continue
            row.update(emotion="neutral", calm_as_neutral=True)
        shutil.copy2(source.parent / row["audio"], out / row["audio"])
        rows.append(row)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} rows, {sum('calm_as_neutral' in r for r in rows)} calm clips as neutral -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
