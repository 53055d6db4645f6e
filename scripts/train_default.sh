#!/usr/bin/env bash
# The whole recipe, from an empty folder to the shipped checkpoints in assets/.
# On a 2-core CPU about two hours (2026-12-02, AMD EPYC 2 threads: synth 1.7 min; stage 1
# 36 min = features 5, targets 12, head seconds, 400 steps 19; ASR hypotheses of the 3056
# train and dev clips 27 min, cached; stage 2 200 steps 10 min; neutral stages 7 + 9 min); on one GPU much less.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-400}
NEUTRAL_STEPS=${NEUTRAL_STEPS:-150}
LEX_STEPS=${LEX_STEPS:-200}
LEX_NEUTRAL_STEPS=${LEX_NEUTRAL_STEPS:-200}
python -m semollama_core synth --out data/synth                       # 3392 clips, splits by sentence and voice
python -m semollama_core train-ser data/synth/manifest.jsonl --out assets/standalone_ser
# stage 1: speech tokens alone (the emotion head, the emotion token, the frame tokens)
python -m semollama_core train data/synth/manifest.jsonl --out runs/speech_llm --targets data/targets \
  --mode emotion --steps "$STEPS"
# stage 2: the lexical path (the LLM also reads the ASR hypothesis). The speech path of stage 1
# stays bit-identical (so does label scoring); only 8 tokens between the speech and the words learn.
python -m semollama_core train data/synth/manifest.jsonl --out runs/speech_llm_lex --targets data/targets \
  --mode emotion --lexical asr --lexical-prompt 8 --freeze-speech 1 --init runs/speech_llm/adapter \
  --steps "$LEX_STEPS" --lr 5e-3 --warmup 10 --task-weights respond:0.7,asr:0.05,caption:0.25
python -m semollama_core train data/synth/manifest.jsonl --out runs/neutral_aligned --targets data/targets \
  --mode neutral --steps "$NEUTRAL_STEPS"
# the ablation's stage 2 trains its whole adapter with the words (a stronger baseline than ours)
python -m semollama_core train data/synth/manifest.jsonl --out runs/neutral_lex --targets data/targets \
  --mode neutral --lexical asr --init runs/neutral_aligned/adapter --steps "$LEX_NEUTRAL_STEPS" --lr 1e-3
python -m semollama_core export runs/speech_llm_lex assets/speech_llm
python -m semollama_core export runs/neutral_lex assets/neutral_aligned
