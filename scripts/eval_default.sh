#!/usr/bin/env bash
# Every figure in the model card and eval/README.md, on the synthetic test split
# (unseen sentences and voices). Results go to results/.
set -euo pipefail
cd "$(dirname "$0")/.."
M="${MANIFEST:-data/synth/manifest.jsonl}"
mkdir -p results
python -m eval.ser "$M" --out results/ser.json --systems speech_llm,emotion_head,text_only,standalone,neutral_aligned
# held-out corpus: festival voices, noise on every clip (see README, Training)
[ -f data/heldout/manifest.jsonl ] || python -m semollama_core synth --out data/heldout --engines festival \
  --split test --per-pair 3 --noise-prob 1.0
python -m eval.ser data/heldout/manifest.jsonl --out results/heldout_ser.json --systems speech_llm,emotion_head,text_only,standalone
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
