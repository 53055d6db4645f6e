#!/usr/bin/env bash
# The whole recipe, from an empty folder to the shipped checkpoints in assets/.
# On a 2-core CPU it takes about two hours; on one GPU about fifteen minutes.
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
