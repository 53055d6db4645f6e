#!/usr/bin/env bash
# The whole recipe, from an empty folder to the shipped checkpoints in assets/.
# On a 2-core CPU about an hour (2026-12-02, AMD EPYC 2 threads: synth 1.7 min; the emotion
# run 36 min = features 5, targets 12, head seconds, 400 steps 19); on one GPU much less.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-400}
NEUTRAL_STEPS=${NEUTRAL_STEPS:-250}
python -m semollama_core synth --out data/synth                       # 3392 clips, splits by sentence and voice
python -m semollama_core train-ser data/synth/manifest.jsonl --out assets/standalone_ser
python -m semollama_core train data/synth/manifest.jsonl --out runs/speech_llm --targets data/targets \
  --mode emotion --steps "$STEPS"
python -m semollama_core train data/synth/manifest.jsonl --out runs/neutral_aligned --targets data/targets \
  --mode neutral --steps "$NEUTRAL_STEPS"
python -m semollama_core export runs/speech_llm assets/speech_llm
python -m semollama_core export runs/neutral_aligned assets/neutral_aligned
