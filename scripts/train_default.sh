#!/usr/bin/env bash
# The whole recipe, from an empty folder to the shipped checkpoints in assets/.
#
#   bash scripts/train_default.sh              # the shipped default: synthetic corpus v2 + RAVDESS actors 1-10
#   OPEN=1 bash scripts/train_default.sh       # a variant without any non-commercial data (synthetic v2, no MBROLA)
#
# The default reads RAVDESS from ../shared/data/ravdess (CC BY-NC-SA 4.0): checkpoints trained
# with it inherit its non-commercial, share-alike terms (see assets/speech_llm/README.md).
# RAVDESS actors 11-12 are dev (choices), 13-16 held back (never trained or tuned on).
# The corpus voices outside Debian main (MBROLA, RHVoice) come from
# `bash scripts/install_corpus_voices.sh`; Piper from requirements-corpus.txt.
# Measured times are in the model card (assets/speech_llm/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-200}
NEUTRAL_STEPS=${NEUTRAL_STEPS:-80}
LEX_STEPS=${LEX_STEPS:-80}
LEX_NEUTRAL_STEPS=${LEX_NEUTRAL_STEPS:-60}
LEX_CLIPS=${LEX_CLIPS:-240}            # clips whose ASR hypotheses stage 2 reads (cached, resumable)
TARGET_CLIPS=${TARGET_CLIPS:-480}      # clips whose alignment targets the frozen LLM writes (the head sees every clip)
RAVDESS=${RAVDESS:-../shared/data/ravdess/manifest.jsonl}
MIX=data/mix
if [ "${OPEN:-0}" = "1" ]; then
  # no non-commercial data: no RAVDESS, and no MBROLA voices (their databases are non-commercial)
  MIX=data/mix_open
  python -m semollama_core synth --out data/synth_v2_open --workers 2 --engines espeak-ng,flite,festival,rhvoice,piper
  python -m semollama_core mix --out "$MIX" data/synth_v2_open/manifest.jsonl
else
  python -m semollama_core synth --out data/synth_v2 --workers 2    # splits by sentence and by person; audit at the end
  # real voices: RAVDESS split by speaker, each training clip also once through the label-free channel
  python -m semollama_core mix --out "$MIX" data/synth_v2/manifest.jsonl "$RAVDESS" \
    --speaker-splits semollama_core/corpus/resources/ravdess_splits.json --augment 1
fi
python -m semollama_core audit "$MIX/manifest.jsonl" --out "$MIX/audit.json"
python -m semollama_core train-ser "$MIX/manifest.jsonl" --out assets/standalone_ser
# stage 1: speech tokens alone (the emotion head on utterance functionals, fitted first with every
# corpus and label weighing the same, then frozen; the emotion token; the frame tokens)
python -m semollama_core train "$MIX/manifest.jsonl" --out runs/speech_llm --targets data/targets \
  --mode emotion --steps "$STEPS" --target-clips "$TARGET_CLIPS"
# stage 2: the lexical path (the LLM also reads the ASR hypothesis). The speech path of stage 1
# stays bit-identical (so does label scoring); only 8 tokens between the speech and the words learn.
python -m semollama_core train "$MIX/manifest.jsonl" --out runs/speech_llm_lex --targets data/targets \
  --mode emotion --lexical asr --lexical-prompt 8 --freeze-speech 1 --init runs/speech_llm/adapter \
  --lexical-clips "$LEX_CLIPS" --steps "$LEX_STEPS" --lr 5e-3 --warmup 10 \
  --task-weights respond:0.7,asr:0.05,caption:0.25
python -m semollama_core train "$MIX/manifest.jsonl" --out runs/neutral_aligned --targets data/targets \
  --mode neutral --steps "$NEUTRAL_STEPS" --target-clips "$TARGET_CLIPS"
# the ablation's stage 2 trains its whole adapter with the words (a stronger baseline than ours)
python -m semollama_core train "$MIX/manifest.jsonl" --out runs/neutral_lex --targets data/targets \
  --mode neutral --lexical asr --lexical-clips "$LEX_CLIPS" --init runs/neutral_aligned/adapter \
  --steps "$LEX_NEUTRAL_STEPS" --lr 1e-3
python -m semollama_core export runs/speech_llm_lex assets/speech_llm
python -m semollama_core export runs/neutral_lex assets/neutral_aligned
