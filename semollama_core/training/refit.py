"""`fit-head`: refit a trained adapter's emotion head on a wider manifest, every other weight kept.

The emotion head is fitted alone on utterance functionals and then frozen (head.py); alignment
teaches the rest of the adapter to carry its posterior to the LLM through the emotion token (a
posterior-weighted mix of learnt label embeddings). A head refitted on more voices therefore
plugs into the same emotion token: the frame tokens, the emotion embeddings and the lexical
prompt stay bit-identical. The recipe uses it to let the head meet real speech that alignment
never read (the Polish speakers of `real-corpus`), without the hours of LLM target decoding a
new alignment would cost:

    python -m semollama_core fit-head data/mix_real/manifest.jsonl --run runs/speech_llm_lex \\
        --out runs/speech_llm_head

The new run folder holds the adapter, the run's log and options, the head's report
(`emotion_head.json`) and `head_refit.json` (the exact command, the manifest's sha256, clips
per corpus, inherited licences); `export` puts them on the model card.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .export import HEAD_REFIT_FILE, record_run
from .head import fit_emotion_head, with_head_inputs
from .train import load_clips

RUN_FILES = ("log.csv", "train_options.json", "run_info.json", "loss_curve.png")


def refit_head(manifest: str, run_dir: str | Path, out_dir: str | Path, *, epochs: int = 60, seed: int = 0,
               cache: str | Path = "data/targets/features", command: list[str] | None = None,
               head_exclude: tuple[str, ...] | None = None, head_backbone: str | None = None) -> dict:
    """Fit the head of RUN/adapter again on MANIFEST's train split (dev reported), write OUT.
    `head_exclude` (column groups, model.adapter.head_column_groups) and `head_backbone` (the
    backbone whose pooled states the head reads; "" the adapter's own) give the new head other
    inputs; None keeps the run's."""
    from ..config import SEmoConfig
    from ..model.adapter import save_adapter
    from ..model.pipeline import SEmoLlama

    run, out = Path(run_dir), Path(out_dir)
    if not (run / "adapter").is_dir():
        raise ValueError(f"{run} is not a training run: it has no adapter/ folder.")
    if out.resolve() == run.resolve():
        raise ValueError("--out must be a new folder: the run it starts from stays as it was.")
    system = SEmoLlama(SEmoConfig.from_env().replace(adapter=str(run / "adapter"), decoder="torch", device="cpu"))
    adapter = system.adapter
    if not adapter.config.utterance_dim or not adapter.config.labels:
        raise ValueError(f"{run}/adapter has no utterance-functional emotion head to refit.")
    exclude = adapter.config.head_exclude if head_exclude is None else tuple(head_exclude)
    second = adapter.config.head_backbone if head_backbone is None else head_backbone
    if (exclude, second) != (adapter.config.head_exclude, adapter.config.head_backbone):
        adapter = with_head_inputs(adapter, exclude, second)
    clips = load_clips(manifest, ("train", "dev"), system, Path(cache), head_backbone=second)
    if not clips["train"]:
        raise ValueError(f"{manifest} has no training clips (split 'train').")
    report = fit_emotion_head(adapter, clips["train"], clips["dev"], epochs=epochs, seed=seed, device="cpu",
                              balance=True)
    out.mkdir(parents=True, exist_ok=True)
    save_adapter(adapter, out / "adapter")
    for name in RUN_FILES:
        if (run / name).exists():
            shutil.copy2(run / name, out / name)
    (out / "emotion_head.json").write_text(json.dumps(report, indent=2))
    info = record_run(manifest, out, command or ["python", "-m", "semollama_core", "fit-head", manifest,
                                                 "--run", str(run), "--out", str(out)], name=HEAD_REFIT_FILE)
    info.update(from_run=str(run), epochs=epochs, seed=seed, report=report)
    (out / HEAD_REFIT_FILE).write_text(json.dumps(info, indent=2))
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m semollama_core fit-head",
                                     description="Refit a trained adapter's emotion head on a manifest's train "
                                                 "split; every other weight stays bit-identical.")
    parser.add_argument("manifest", help="JSONL or CSV manifest with train (and dev) splits")
    parser.add_argument("--run", required=True, help="training run folder holding adapter/ (e.g. runs/speech_llm_lex)")
    parser.add_argument("--out", required=True, help="new run folder for the refitted adapter")
    parser.add_argument("--epochs", type=int, default=60, help="head epochs (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="data/targets/features", help="feature cache (default %(default)s)")
    parser.add_argument("--head-exclude", default=None, metavar="GROUPS",
                        help="comma-separated column groups the new head does not read (backbone_mean, "
                             "backbone_std, prosody, egemaps, absolute); 'none' reads all (default: the run's)")
    parser.add_argument("--head-backbone", default=None, metavar="NAME",
                        help="the backbone whose pooled states the new head reads: embedded:whisper-base "
                             "(Whisper base, multilingual) or 'none' for the adapter's own (default: the run's)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        print("error: --epochs must be at least 1.", file=sys.stderr)
        return 2
    try:
        exclude = None if args.head_exclude is None else tuple(
            g for g in args.head_exclude.split(",") if g and g != "none")
        report = refit_head(args.manifest, args.run, args.out, epochs=args.epochs, seed=args.seed, cache=args.cache,
                            command=["python", "-m", "semollama_core", "fit-head", *argv], head_exclude=exclude,
                            head_backbone=None if args.head_backbone is None else
                            ("" if args.head_backbone == "none" else args.head_backbone))
    except (ValueError, OSError, RuntimeError) as e:  # RuntimeError: ModelUnavailableError
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0
