"""Does what the emotion head learns carry to a corpus it never heard? A dev-only check.

The shipped head (stage 3, `fit-head`) is refitted here with the recipe's own settings
(`training.head.fit_emotion_head`: 60 epochs, every (corpus, label) cell weighing the same) on
the train rows of a mixed manifest, once with every corpus and once without each real corpus in
turn, and read out on the dev rows of every corpus. Leaving a corpus out of training and
scoring its dev speakers measures transfer to unseen people in an unseen corpus, which is
what the held-back and outside evaluations ask of the model. Only train and dev rows are read,
never test rows. The adapter's other weights do not matter here (the head reads utterance
functionals of the frozen backbone); features come from the training cache.

    python scripts/cross_corpus_dev.py data/mix_real/manifest.jsonl --adapter assets/speech_llm \\
        --out results/cross_corpus_dev.json

Writes, per fit ("all", "without_<corpus>" for each corpus, synthetic included, and
"only_<synthetic corpus>") and dev corpus: UA over the labels present, the
mean and each seed; for a corpus with only angry and neutral, also `angry_vs_neutral` (the higher
of the two label probabilities, chance 0.5).
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
from head_transfer_dev import add_fit_arguments  # noqa: E402
from semollama_core.config import SEmoConfig  # noqa: E402
from semollama_core.metrics import unweighted_accuracy  # noqa: E402
from semollama_core.model.pipeline import SEmoLlama  # noqa: E402
from semollama_core.training.head import clip_source, fit_emotion_head, head_inputs  # noqa: E402
from semollama_core.training.train import load_clips  # noqa: E402

SYNTHETIC = "synth_v2"


def source(clip) -> str:
    return clip_source(clip[0])


def angry_vs_neutral(adapter, clips: list, labels: list[str]) -> float | None:
    """For a corpus holding only angry and neutral: UA of the higher of those two label
    probabilities (chance 0.5), which sets aside the head's prior over the other labels."""
    truth = [u.emotion for u, _, _ in clips]
    if set(truth) != {"angry", "neutral"}:
        return None
    with torch.no_grad():
        logits = adapter.head_logits(head_inputs(adapter, [f for _, f, _ in clips], "cpu"))
    a, n = labels.index("angry"), labels.index("neutral")
    return unweighted_accuracy(truth, ["angry" if row[a] > row[n] else "neutral" for row in logits],
                               ("angry", "neutral"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="mixed manifest with a `source` column and train/dev splits")
    parser.add_argument("--run", default="runs/speech_llm_head", help="run folder whose adapter/ holds the head")
    parser.add_argument("--adapter", default=None,
                        help="an adapter folder instead of RUN/adapter (e.g. assets/speech_llm; only the "
                             "head's inputs matter: every fit starts from fresh head weights)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    add_fit_arguments(parser)
    parser.add_argument("--synthetic", default=SYNTHETIC,
                        help="the synthetic corpus's source name (the folder of its manifest)")
    args = parser.parse_args(argv)
    seeds = args.seeds
    adapter_dir = args.adapter or str(Path(args.run) / "adapter")
    system = SEmoLlama(SEmoConfig.from_env().replace(adapter=adapter_dir, decoder="torch",
                                                      device="cpu"))
    labels = list(system.adapter.config.labels)
    clips = load_clips(args.manifest, ("train", "dev"), system, Path(args.cache))
    corpora = sorted({source(c) for c in clips["train"]})
    dev = {name: [c for c in clips["dev"] if source(c) == name] for name in corpora}
    real = tuple(name for name in corpora if name != args.synthetic)
    # each real corpus left out in turn; and every real corpus left out (the synthetic corpus alone)
    fits = {"all": (), **{f"without_{name}": (name,) for name in real}, f"only_{args.synthetic}": real,
            f"without_{args.synthetic}": (args.synthetic,)}
    results: dict = {}
    for fit_name, left_out in fits.items():
        train = [c for c in clips["train"] if source(c) not in left_out]
        runs: dict = {}
        for seed in seeds:
            adapter = copy.deepcopy(system.adapter)
            # the recipe's own fit reports UA on each corpus's dev rows (head_dev_<corpus>_ua)
            report = fit_emotion_head(adapter, train, clips["dev"], epochs=args.epochs, seed=seed)
            for name, rows in dev.items():
                runs.setdefault(f"{name}.ua", []).append(report[f"head_dev_{name}_ua"])
                binary = angry_vs_neutral(adapter, rows, labels)
                if binary is not None:
                    runs.setdefault(f"{name}.angry_vs_neutral", []).append(binary)
        results[fit_name] = {key: {"mean": round(float(np.mean(v)), 3), "seeds": [round(float(x), 3) for x in v],
                                   "n": len(dev[key.split(".")[0]])} for key, v in runs.items()}
        print(fit_name, json.dumps({k: v["mean"] for k, v in results[fit_name].items()}), flush=True)
    report = {"manifest": args.manifest, "adapter": adapter_dir, "seeds": seeds, "epochs": args.epochs,
              "train_clips": {name: sum(source(c) == name for c in clips["train"]) for name in corpora},
              "fits": results, "command": "python scripts/cross_corpus_dev.py " + " ".join(argv)}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
