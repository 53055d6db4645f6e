"""Does a speaker's own neutral voice help the emotion head name that speaker's emotions? A dev-only check.

Every cue of EXPRESSIVE_SPEECH.md is relative to the speaker's own neutral rendering, and one
clip of an unseen voice does not carry it (`scripts/synth_ceiling_dev.py`: on synthetic dev,
prosody of one clip reaches 0.536, relative to the voice's other neutral clips 0.661). Speech
emotion work calls the fix speaker normalisation; in an app it is a calibration recording: say
something calmly once, then talk.

This script refits the emotion head (the recipe's loop: balanced (corpus, label) weights,
60 epochs, seeds 0-2) on the shipped mix twice, on the same rows:
- `plain`: the head's own inputs (utterance functionals of the clip), as shipped;
- `calibrated`: those inputs and their difference to the mean of the same speaker's neutral
  clips (other recordings only: a clip's own augmented copies never count as its reference);
- `calibrated_functionals`: the inputs and that difference for the prosody and eGeMAPS
  functionals only (not the Whisper states).

It reads out each corpus's dev rows, with the posteriors averaged over seeds, and the paired UA
difference calibrated - plain with a 95 % bootstrap interval that resamples sentences. A dev
row is scored only where its speaker has another neutral recording. Only train and dev rows
are read, never test rows or held-back speakers.

    python scripts/calibration_dev.py data/mix_real/manifest.jsonl --out results/calibration_dev.json
    python scripts/calibration_dev.py data/mix_real/manifest.jsonl --leave-out ravdess --out results/calibration_dev_without_ravdess.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval.common import paired_ua_difference, resampling_groups, run_meta, ua_bootstrap_ci, write_json  # noqa: E402
from head_transfer_dev import add_fit_arguments, fit  # noqa: E402
from semollama_core.config import SEmoConfig  # noqa: E402
from semollama_core.metrics import unweighted_accuracy  # noqa: E402
from semollama_core.model.adapter import head_column_groups  # noqa: E402
from semollama_core.model.pipeline import SEmoLlama  # noqa: E402
from semollama_core.training.head import balanced_weights, clip_source, head_inputs  # noqa: E402
from semollama_core.training.train import load_clips  # noqa: E402


def recording(utt) -> str:
    """The recording a clip comes from: its file name without an augmentation suffix (-a1, -p2)."""
    return re.sub(r"-[ap]\d+$", "", Path(utt.audio_path).stem)


def neutral_references(utts: list, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the mean input of its speaker's neutral rows from other recordings, and whether
    there was one."""
    by_speaker: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        if u.emotion == "neutral":
            by_speaker.setdefault(u.speaker or "", []).append(i)
    refs, has = torch.zeros_like(x), torch.zeros(len(utts), dtype=torch.bool)
    for i, u in enumerate(utts):
        others = [j for j in by_speaker.get(u.speaker or "", []) if recording(utts[j]) != recording(u)]
        if others:
            refs[i], has[i] = x[others].mean(0), True
    return refs, has


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="the mixed manifest (a `source` column, train and dev splits)")
    parser.add_argument("--out", required=True)
    add_fit_arguments(parser)
    parser.add_argument("--leave-out", default="", help="fit without this source's train rows (e.g. ravdess): "
                                                        "how the head carries to a corpus it never heard")
    args = parser.parse_args(argv)
    system = SEmoLlama(SEmoConfig.from_env().replace(decoder="torch", device="cpu"))
    adapter = system.adapter
    labels = list(adapter.config.labels)
    clips = load_clips(args.manifest, ("train", "dev"), system, Path(args.cache))
    utts, x, ref, has = {}, {}, {}, {}
    for split in ("train", "dev"):
        rows = [c for c in clips[split] if c[0].emotion in labels]
        utts[split] = [u for u, _, _ in rows]
        x[split] = head_inputs(adapter, [f for _, f, _ in rows], "cpu").float()
        ref[split], has[split] = neutral_references(utts[split], x[split])
    keep = {s: [i for i in torch.nonzero(has[s]).flatten().tolist()
                if s == "dev" or clip_source(utts[s][i]) != args.leave_out] for s in has}
    groups = head_column_groups(adapter.config)
    functionals = groups["prosody"] + groups["egemaps"]
    inputs = {"plain": {s: x[s][keep[s]] for s in x},
              "calibrated": {s: torch.cat([x[s], x[s] - ref[s]], 1)[keep[s]] for s in x},
              "calibrated_functionals": {s: torch.cat([x[s], (x[s] - ref[s])[:, functionals]], 1)[keep[s]]
                                         for s in x}}
    train_utts = [utts["train"][i] for i in keep["train"]]
    dev_utts = [utts["dev"][i] for i in keep["dev"]]
    y = torch.tensor([labels.index(u.emotion) for u in train_utts])
    weights = balanced_weights(train_utts, labels)
    posteriors = {}
    for name, data in inputs.items():
        mean, std = data["train"].mean(0), data["train"].std(0).clamp(min=1e-3)
        runs = []
        for seed in args.seeds:
            head = fit((data["train"] - mean) / std, y, weights, seed=seed, epochs=args.epochs, n_labels=len(labels))
            with torch.no_grad():
                runs.append(torch.softmax(head((data["dev"] - mean) / std), -1))
        posteriors[name] = torch.stack(runs).mean(0)
    predicted = {name: [labels[int(p.argmax())] for p in post] for name, post in posteriors.items()}
    sources = [clip_source(u) for u in dev_utts]
    report = {"meta": run_meta(args.manifest), "seeds": args.seeds, "epochs": args.epochs,
              "left_out": args.leave_out or None,
              "train_rows": len(train_utts), "train_rows_without_reference": int((~has["train"]).sum()),
              "dev_rows_without_reference": int((~has["dev"]).sum()), "corpora": {}}
    real = sorted({s for s in sources if s != "synth_v2"})
    for corpus, members in [(s, [s]) for s in sorted(set(sources))] + [("real_pooled", real)]:
        idx = [i for i, s in enumerate(sources) if s in members]
        truth = [dev_utts[i].emotion for i in idx]
        present = [l for l in labels if l in truth]
        groups = resampling_groups([dev_utts[i] for i in idx])
        entry = {"n": len(idx), "labels": present}
        for name in predicted:
            pred = [predicted[name][i] for i in idx]
            entry[name] = {"ua": round(unweighted_accuracy(truth, pred, present), 4),
                           "ua_ci95": ua_bootstrap_ci(truth, pred, present, groups)}
        for name in predicted:
            if name != "plain":
                entry[f"{name}_minus_plain"] = paired_ua_difference(
                    truth, [predicted[name][i] for i in idx], [predicted["plain"][i] for i in idx], present, groups)
        report["corpora"][corpus] = entry
        print(corpus, json.dumps(entry), flush=True)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
