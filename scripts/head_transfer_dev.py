"""Which utterance functionals let the emotion head carry to a corpus it never heard? A dev-only search.

`scripts/cross_corpus_dev.py` showed that the shipped head transfers little: fitted without
RAVDESS it names RAVDESS dev actors at 0.375, fitted without the Polish speakers it names the
Polish dev speaker at 0.167. This script refits the head (the recipe's loop: balanced
(corpus, label) weights, label smoothing, AdamW, dropout; 60 epochs) on column groups of its
input and reads out, per fit ("all", "without_<corpus>"), each corpus's dev rows, for several
seeds. A design is worth shipping only if it transfers better (the "without" fits) and loses
nothing in-domain (the "all" fit). Only train and dev rows are read, never test rows.

    python scripts/head_transfer_dev.py data/mix_real/manifest.jsonl --out results/head_transfer_dev.json

Column groups of the head's input (`SpeechAdapter.head_inputs`): `backbone_mean`,
`backbone_std` (Whisper encoder states), `prosody` (F0, voicing, energy, brightness
statistics), `egemaps` (88 functionals). `absolute` is the part of them that depends on a
voice's own pitch or on the recording level: the absolute F0 statistics of the prosody
channel and eGeMAPS's F0 level, loudness and sound level.
"""
from __future__ import annotations

import argparse
import dataclasses
import zlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from semollama_core import coloured_noise, mix_at_snr  # noqa: E402
from semollama_core.config import SEmoConfig  # noqa: E402
from semollama_core.metrics import unweighted_accuracy  # noqa: E402
from semollama_core.model.adapter import head_column_groups  # noqa: E402
from semollama_core.model.pipeline import SEmoLlama  # noqa: E402
from semollama_core.training.head import balanced_weights, clip_source, head_inputs, train_head  # noqa: E402
from semollama_core.training.train import load_clips  # noqa: E402

SYNTHETIC = "synth_v2"
VARIANTS = {
    "all": ((), {}),
    "no_backbone_mean": (("backbone_mean",), {}),
    "no_backbone": (("backbone_mean", "backbone_std"), {}),
    "no_absolute": (("absolute",), {}),
    "no_backbone_mean_no_absolute": (("backbone_mean", "absolute"), {}),
    "prosody_egemaps_relative": (("backbone_mean", "backbone_std", "absolute"), {}),
    "all_strong_reg": ((), {"weight_decay": 0.1, "input_dropout": 0.5}),
    "no_backbone_mean_strong_reg": (("backbone_mean",), {"weight_decay": 0.1, "input_dropout": 0.5}),
}


def fit(x, y, w, *, seed: int, epochs: int, hidden: int = 256, weight_decay: float = 1e-2,
        input_dropout: float = 0.2, n_labels: int) -> torch.nn.Module:
    """The recipe's head (SpeechAdapter.emotion_head's layers) and loop (training.head.train_head)
    on standardised columns, with the input dropout and weight decay as knobs."""
    head = torch.nn.Sequential(torch.nn.Dropout(input_dropout), torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(),
                               torch.nn.Dropout(0.5), torch.nn.Linear(hidden, n_labels))
    return train_head(head, x, y, w, epochs=epochs, seed=seed, weight_decay=weight_decay, progress=False)


def corpus_fits(x_train, y_train, train_rows: list, sources: list[str], labels: list[str], *, seeds: list[int],
                epochs: int, **settings):
    """The leave-one-corpus-out fits: with every corpus ("all"), then without each real corpus
    in turn ("without_NAME"). Yields the fit's name and, per seed, the head fitted on standardised
    training columns with the mean and spread it standardises by."""
    for left_out in [None] + sorted({s for s in sources if s != SYNTHETIC}):
        train = [i for i, s in enumerate(sources) if s != left_out]
        xt, yt = x_train[train], y_train[train]
        mean, std = xt.mean(0), xt.std(0).clamp(min=1e-3)
        w = balanced_weights([train_rows[i][0] for i in train], labels)
        heads = [fit((xt - mean) / std, yt, w, seed=seed, epochs=epochs, n_labels=len(labels), **settings)
                 for seed in seeds]
        yield ("all" if left_out is None else f"without_{left_out}"), [(head, mean, std) for head in heads]


def noisy_dev_inputs(system, dev_rows: list, sources: list[str], spec: str) -> dict:
    """{"brown10": (head inputs [n, width], dev row indices)}: the real (non-synthetic) dev rows
    with seeded noise at each SNR of `spec` ("brown:10,brown:5"), through the adapter's features."""
    out = {}
    for item in filter(None, spec.split(",")):
        kind, snr = item.split(":")
        idx = [i for i, s in enumerate(sources) if s != SYNTHETIC]
        features = []
        for i in tqdm(idx, desc=f"{kind} {snr} dB", unit="clip"):
            utt = dev_rows[i][0]
            audio = system.load(str(utt.audio_path))
            rng = np.random.default_rng([zlib.crc32(str(utt.audio_path).encode()), zlib.crc32(item.encode())])
            features.append(system.features(mix_at_snr(audio, coloured_noise(kind, len(audio), rng), float(snr)),
                                            transcribe=False))
        out[f"{kind}{snr}"] = (head_inputs(system.adapter, features, "cpu").float(), idx)
    return out


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every dev script that refits the emotion head shares: --seeds (a comma list,
    parsed to ints), --epochs (the recipe's 60) and --cache (the training feature cache)."""
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default="0,1,2")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--cache", default="data/targets/features")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="mixed manifest with a `source` column and train/dev splits")
    parser.add_argument("--out", required=True)
    add_fit_arguments(parser)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--noisy-dev", default="",
                        help="also score the 'all' fit on the real dev rows under noise, e.g. brown:10,brown:5 "
                             "(kinds: white, pink, brown; SNR in dB)")
    parser.add_argument("--prosody-version", type=int, default=None,
                        help="prosody channel of the features (default: the shipped adapter's)")
    args = parser.parse_args(argv)
    seeds = args.seeds
    system = SEmoLlama(SEmoConfig.from_env().replace(decoder="torch", device="cpu"))
    adapter = system.adapter
    if args.prosody_version is not None:  # features of another prosody channel (the head is refitted anyway)
        adapter.config = dataclasses.replace(adapter.config, prosody_version=args.prosody_version)
    labels = list(adapter.config.labels)
    clips = load_clips(args.manifest, ("train", "dev"), system, Path(args.cache))
    rows = {split: [c for c in clips[split] if c[0].emotion in labels] for split in ("train", "dev")}
    x = {split: head_inputs(adapter, [f for _, f, _ in r], "cpu").float() for split, r in rows.items()}
    y = {split: torch.tensor([labels.index(u.emotion) for u, _, _ in r]) for split, r in rows.items()}
    src = {split: [clip_source(u) for u, _, _ in r] for split, r in rows.items()}
    groups = head_column_groups(adapter.config)
    corpora = sorted(set(src["train"]))
    noisy = noisy_dev_inputs(system, rows["dev"], src["dev"], args.noisy_dev)
    results: dict = {}
    for name in args.variants.split(","):
        excluded, settings = VARIANTS[name]
        keep = torch.ones(x["train"].shape[1], dtype=torch.bool)
        for group in excluded:
            keep[groups[group]] = False
        results[name] = {"excluded": list(excluded), "settings": settings, "columns": int(keep.sum()), "fits": {}}
        for fit_name, fitted in corpus_fits(x["train"][:, keep], y["train"], rows["train"], src["train"], labels,
                                            seeds=seeds, epochs=args.epochs, **settings):
            scores: dict = {}
            for head, mean, std in fitted:
                with torch.no_grad():
                    logits = head((x["dev"][:, keep] - mean) / std)
                for corpus in corpora:
                    idx = [i for i, s in enumerate(src["dev"]) if s == corpus]
                    truth = [labels[int(y["dev"][i])] for i in idx]
                    scores.setdefault(f"{corpus}.ua", []).append(unweighted_accuracy(
                        truth, [labels[int(logits[i].argmax())] for i in idx], tuple(labels)))
                    for condition, (x_noisy, noisy_idx) in noisy.items() if fit_name == "all" else ():
                        if corpus in {src["dev"][i] for i in noisy_idx}:
                            with torch.no_grad():
                                noisy_logits = head((x_noisy[:, keep] - mean) / std)
                            pick = [k for k, i in enumerate(noisy_idx) if src["dev"][i] == corpus]
                            scores.setdefault(f"{corpus}.{condition}.ua", []).append(unweighted_accuracy(
                                [labels[int(y["dev"][noisy_idx[k]])] for k in pick],
                                [labels[int(noisy_logits[k].argmax())] for k in pick], tuple(labels)))
                    if set(truth) == {"angry", "neutral"}:
                        a, n = labels.index("angry"), labels.index("neutral")
                        scores.setdefault(f"{corpus}.angry_vs_neutral", []).append(unweighted_accuracy(
                            truth, ["angry" if logits[i, a] > logits[i, n] else "neutral" for i in idx],
                            ("angry", "neutral")))
            results[name]["fits"][fit_name] = {k: {"mean": round(float(np.mean(v)), 3),
                                                   "seeds": [round(float(s), 3) for s in v]} for k, v in scores.items()}
            print(name, fit_name, json.dumps({k: v["mean"] for k, v in results[name]["fits"][fit_name].items()}),
                  flush=True)
    report = {"manifest": args.manifest, "seeds": seeds, "epochs": args.epochs,
              "prosody_version": adapter.config.prosody_version,
              "dev_clips": {c: src["dev"].count(c) for c in corpora},
              "train_clips": {c: src["train"].count(c) for c in corpora}, "variants": results,
              "command": "python scripts/head_transfer_dev.py " + " ".join(argv)}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
