"""Two training mixes for the emotion head, compared on the same dev clips with a paired interval.
A dev-only check (no test row is read).

The head is refitted with the recipe's settings (`training.head.fit_emotion_head`) on the train
rows of each mix, once per seed; each dev clip's posteriors are averaged over the seeds and the
argmax is its label. Dev clips are matched across the mixes by their path under the mix's
clips/ folder (a mix hard-links the same source clips), so both heads are scored on identical
audio. Reports, per corpus and for the real corpora pooled, UA of each mix and the paired
difference (B - A) with a 95 % bootstrap interval over clips.

    python scripts/paired_head_dev.py data/mix_real/manifest.jsonl data/mix_real_p/manifest.jsonl \\
        --adapter assets/speech_llm --out results/perturb_speaker_paired_dev.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from eval.common import paired_ua_difference  # noqa: E402
from head_transfer_dev import add_fit_arguments  # noqa: E402
from semollama_core.config import SEmoConfig  # noqa: E402
from semollama_core.metrics import unweighted_accuracy  # noqa: E402
from semollama_core.model.pipeline import SEmoLlama  # noqa: E402
from semollama_core.training.head import clip_source, fit_emotion_head, head_inputs  # noqa: E402
from semollama_core.training.train import load_clips  # noqa: E402


def dev_posteriors(system, manifest: str, seeds: list[int], epochs: int, cache: Path) -> dict:
    """{clip key: (source, true label, seed-averaged posterior, real speech?)} for the mix's dev rows."""
    clips = load_clips(manifest, ("train", "dev"), system, cache)
    root = Path(manifest).resolve().parent
    dev = clips["dev"]
    inputs = head_inputs(system.adapter, [f for _, f, _ in dev], "cpu")  # the same columns for every seed
    total = None
    for seed in seeds:
        adapter = copy.deepcopy(system.adapter)
        fit_emotion_head(adapter, clips["train"], [], epochs=epochs, seed=seed)  # dev is scored below
        with torch.no_grad():
            probs = torch.softmax(adapter.head_logits(inputs), -1)
        total = probs if total is None else total + probs
    mean = (total / len(seeds)).numpy()
    return {str(Path(u.audio_path).resolve().relative_to(root)): (clip_source(u), u.emotion, mean[i],
                                                                 "engine" not in u.extra)
            for i, (u, _, _) in enumerate(dev)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mix_a", help="the baseline mix's manifest")
    parser.add_argument("mix_b", help="the candidate mix's manifest")
    parser.add_argument("--adapter", default="assets/speech_llm", help="adapter whose head inputs are used")
    parser.add_argument("--out", required=True)
    add_fit_arguments(parser)
    args = parser.parse_args(argv)
    seeds = args.seeds
    system = SEmoLlama(SEmoConfig.from_env().replace(adapter=args.adapter, decoder="torch", device="cpu"))
    labels = list(system.adapter.config.labels)
    a = dev_posteriors(system, args.mix_a, seeds, args.epochs, Path(args.cache))
    b = dev_posteriors(system, args.mix_b, seeds, args.epochs, Path(args.cache))
    keys = sorted(set(a) & set(b))
    if len(keys) != len(a) or len(keys) != len(b):
        raise SystemExit(f"error: the mixes' dev rows differ ({len(a)} and {len(b)}, {len(keys)} shared)")
    sources = sorted({a[k][0] for k in keys})
    real = sorted({a[k][0] for k in keys if a[k][3]})  # a row without an engine is a person (as mix reads it)
    report: dict = {}
    for name, members in [*[(s, (s,)) for s in sources], ("real_pooled", tuple(real))]:
        rows = [k for k in keys if a[k][0] in members]
        truth = [a[k][1] for k in rows]
        pred_a = [labels[int(np.argmax(a[k][2]))] for k in rows]
        pred_b = [labels[int(np.argmax(b[k][2]))] for k in rows]
        present = sorted(set(truth))
        report[name] = {"n": len(rows), "ua_a": round(unweighted_accuracy(truth, pred_a, present), 3),
                        "ua_b": round(unweighted_accuracy(truth, pred_b, present), 3),
                        "b_minus_a": paired_ua_difference(truth, pred_b, pred_a, present)}
        print(name, json.dumps(report[name]), flush=True)
    out = {"mix_a": args.mix_a, "mix_b": args.mix_b, "adapter": args.adapter, "seeds": seeds,
           "epochs": args.epochs, "results": report,
           "command": "python scripts/paired_head_dev.py " + " ".join(argv)}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
