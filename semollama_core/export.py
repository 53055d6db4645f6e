"""Copy a training run's adapter into a shippable folder with a model card."""
from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
from pathlib import Path

from .adapter import CONFIG_FILE, WEIGHTS_FILE, load_adapter


def machine_description() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} threads, {gpu}"


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
        "wall_time_s": float(log[-1]["elapsed_s"]) if log else 0.0,
        "final_train_loss": float(log[-1]["loss"]) if log else None,
        "dev": {k: float(v) for k, v in (log[-1] if log else {}).items() if k.startswith("dev") and v},
        "options": options, "hardware": machine_description(),
        "parameters": sum(p.numel() for p in adapter.parameters()),
        "metrics": metrics or {},
    }
    (dest / "training_info.json").write_text(json.dumps(info, indent=2))
    if (run / "loss_curve.png").exists():
        shutil.copy2(run / "loss_curve.png", dest / "loss_curve.png")
    return dest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m semollama_core export",
                                     description="Ship a run's adapter (fp16 safetensors + config + training info).")
    parser.add_argument("run", help="training run folder (holds adapter/, log.csv)")
    parser.add_argument("dest", help="destination folder, e.g. assets/speech_llm")
    args = parser.parse_args(argv)
    print(json.dumps({"exported": str(export_run(args.run, args.dest))}))
    return 0
