"""Helpers shared by the evaluation commands: manifests and label sets, raw-prediction
files, local `evaluate` metrics, figures, metadata, the command-line wrapper, and the
teacher-forced NLL of given responses."""
from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from semollama_core import Utterance, atomic_write, atomic_write_text, cpu_model, iter_manifest

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
AUTO_SPLIT = "auto"


class EvalError(ValueError):
    """Bad evaluation input, explained in one line."""


# ----------------------------------------------------------------------------- metrics

@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """An `evaluate` module shipped in eval/metrics/<name>/ (loaded by path: works offline)."""
    import evaluate

    folder = METRICS_DIR / name
    if not (folder / f"{name}.py").is_file():
        raise EvalError(f"No metric module {name!r} in {METRICS_DIR}.")
    return evaluate.load(str(folder))


# ----------------------------------------------------------------------------- manifests

def read_rows(manifest: str | os.PathLike) -> list[Utterance]:
    """All rows of an evaluation manifest (each needs an emotion); ManifestError names file:line."""
    return list(iter_manifest(manifest, require_emotion=True))


def choose_split(rows: list[Utterance], split: str | None) -> list[Utterance]:
    """"auto": the test rows when the manifest has any, otherwise every row; None: every row."""
    if split is None or (split == AUTO_SPLIT and not any(u.split == "test" for u in rows)):
        return rows
    wanted = "test" if split == AUTO_SPLIT else split
    chosen = [u for u in rows if u.split == wanted]
    if not chosen:
        seen = ", ".join(sorted({u.split for u in rows if u.split})) or "none"
        raise EvalError(f"No manifest rows with split {wanted!r} (splits present: {seen}).")
    return chosen


def label_set(rows: Iterable[Utterance], config_labels: Sequence[str]) -> tuple[str, ...]:
    """The manifest's labels that the configuration knows, in the configuration's order."""
    present = {u.emotion for u in rows}
    labels = tuple(label for label in config_labels if label in present)
    if len(labels) < 2:
        raise EvalError(f"The manifest's labels ({', '.join(sorted(present))}) share fewer than two "
                        f"with the configured labels ({', '.join(config_labels)}); set SEMOLLAMA_LABELS.")
    return labels


def evaluation_rows(manifest: str | os.PathLike, config_labels: Sequence[str], *, split: str | None = AUTO_SPLIT,
                    limit: int | None = None) -> tuple[list[Utterance], tuple[str, ...], list[str], list[Utterance]]:
    """(rows to evaluate, label set, notes, all rows) for a manifest; fails before any model loads."""
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be a positive number of rows, not {limit}.")
    all_rows = read_rows(manifest)
    rows = choose_split(all_rows, split)
    label_set(rows, config_labels)  # at least two of the manifest's labels must be configured
    # Systems choose among every configured label, whatever else is in the manifest (or its
    # first N rows): a clip's prediction must not depend on the other rows. UA averages over
    # the classes that have references.
    labels = tuple(config_labels)
    kept = [u for u in rows if u.emotion in labels]
    notes = []
    if len(kept) < len(rows):
        dropped = sorted({u.emotion for u in rows} - set(labels))
        notes.append(f"{len(rows) - len(kept)} rows with labels outside the label set left out: {', '.join(dropped)}.")
    return kept[:limit] if limit else kept, labels, notes, all_rows


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    if size < 1:
        raise EvalError(f"batch size must be at least 1, not {size}.")
    for start in range(0, len(items), size):
        yield items[start: start + size]


def progress_bar(total: int, desc: str, progress=None):
    """tqdm bar on stderr; progress=None shows it on a terminal, True/False force it."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="utt", disable=None if progress is None else not progress,
                file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------- the system

def load_system_from_args(quantization: str | None):
    """The system from SEMOLLAMA_* settings, with the command line's quantization if given."""
    from semollama_core import SEmoConfig
    from semollama_core import load_system

    return load_system(SEmoConfig.from_env(quantization=quantization))


def config_labels(quantization: str | None = None) -> tuple[str, ...]:
    from semollama_core import SEmoConfig

    return SEmoConfig.from_env(quantization=quantization).labels


def standalone_model(system, all_rows: list[Utterance], labels: Sequence[str], notes: list[str], progress=None):
    """The shipped standalone SER model, else one fitted now on the manifest's train split, else None."""
    if system.standalone_ser is not None:
        return system.standalone_ser
    from semollama_core import StandaloneSER

    train = [u for u in all_rows if u.split == "train" and u.emotion in labels]
    if len({u.emotion for u in train}) < 2:
        notes.append("standalone: no shipped model and no train split with two labels to fit one; skipped.")
        return None
    waveforms = [system.load(str(u.audio_path)) for u in train]
    model = StandaloneSER().fit(waveforms, [u.emotion for u in train], progress=bool(progress))
    notes.append(f"standalone: no shipped model; fitted on the manifest's {len(train)} train rows.")
    return model


def scoring_backend(system) -> str:
    """What decodes this system's answers, and so also scores them in response_nll."""
    if system.llama_cpp is not None:
        return f"llama.cpp ({system.llama_cpp.path.name})"
    return f"torch ({system.config.quantization})"


def response_nll(system, prompt_inputs: list, responses: list[str], *, speech: list | None = None) -> list[float]:
    """SEmoLlama.response_nll (semollama_core/model/scoring.py), with an EvalError for
    mismatched lists."""
    if len(prompt_inputs) != len(responses):
        raise EvalError(f"{len(prompt_inputs)} prompts but {len(responses)} responses.")
    return system.response_nll(prompt_inputs, responses, speech=speech)


# ----------------------------------------------------------------------------- intervals

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0   # fixed: the same rows always give the same interval


def resampling_groups(rows: Sequence) -> list[str]:
    """The unit a bootstrap resamples, per row: its sentence (the manifest transcript, as the
    clips of one sentence are not independent), else the clip itself."""
    def get(row, key):
        return row.get(key) if isinstance(row, dict) else getattr(row, key, None)

    out = []
    for i, row in enumerate(rows):
        sentence = get(row, "sentence") if isinstance(row, dict) and "sentence" in row else get(row, "transcript")
        clip = get(row, "audio") or get(row, "audio_path") or i
        out.append("sentence:" + " ".join(str(sentence).lower().split()) if sentence else f"clip:{clip}")
    return out


def _group_picks(groups: Sequence[str], resamples: int, seed: int):
    keys = list(dict.fromkeys(groups))
    index = {k: i for i, k in enumerate(keys)}
    member = np.array([index[g] for g in groups])
    picks = np.random.default_rng(seed).integers(0, len(keys), size=(resamples, len(keys)))
    # how often each group is drawn in each resample: [resamples, groups]
    counts = np.zeros((resamples, len(keys)))
    np.add.at(counts, (np.arange(resamples)[:, None], picks), 1)
    return member, counts, len(keys)


def grouped_bootstrap_ci(values: Sequence[float], groups: Sequence[str], resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """95 % percentile interval of the mean of `values`, resampling whole groups."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return None
    member, counts, n = _group_picks(groups, resamples, seed)
    sums, sizes = np.bincount(member, values, n), np.bincount(member, None, n)
    means = (counts @ sums) / np.maximum(counts @ sizes, 1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def ua_bootstrap_ci(references: Sequence[str], predictions: Sequence[str], labels: Sequence[str],
                    groups: Sequence[str], resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """95 % interval of UA (mean recall over the classes present in each resample), resampling
    whole groups (sentences, else clips)."""
    if not references:
        return None
    member, counts, n = _group_picks(groups, resamples, seed)
    return _percentiles(_resampled_ua(member, counts, n, references, predictions, labels))


def paired_ua_difference(references: Sequence[str], predictions_a: Sequence[str], predictions_b: Sequence[str],
                         labels: Sequence[str], groups: Sequence[str] | None = None,
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict | None:
    """UA(a) - UA(b) on the same rows, with a paired 95 % interval: each resample draws whole
    groups (default: each row its own) and scores both systems on the same draw."""
    if not references:
        return None
    groups = list(groups) if groups is not None else [f"row:{i}" for i in range(len(references))]
    member, counts, n = _group_picks(groups, resamples, seed)
    ones = np.ones((1, n))
    point = (_resampled_ua(member, ones, n, references, predictions_a, labels)
             - _resampled_ua(member, ones, n, references, predictions_b, labels))[0]
    diffs = (_resampled_ua(member, counts, n, references, predictions_a, labels)
             - _resampled_ua(member, counts, n, references, predictions_b, labels))
    return {"difference": round(float(point), 4), "ci95": _percentiles(diffs), "n": len(references)}


def _resampled_ua(member, counts, n, references, predictions, labels) -> np.ndarray:
    """UA of each resample ([resamples]), given how often each group is drawn (`counts`)."""
    labels = list(labels)
    totals, correct = np.zeros((n, len(labels))), np.zeros((n, len(labels)))
    for g, ref, pred in zip(member, references, predictions):
        if ref in labels:
            totals[g, labels.index(ref)] += 1
            correct[g, labels.index(ref)] += ref == pred
    t, c = counts @ totals, counts @ correct
    present = t > 0
    return np.where(present, c / np.maximum(t, 1), 0).sum(1) / np.maximum(present.sum(1), 1)


def _percentiles(values: np.ndarray) -> list[float]:
    return [round(float(np.percentile(values, 2.5)), 4), round(float(np.percentile(values, 97.5)), 4)]


# ----------------------------------------------------------------------------- meta

REPO_ROOT = Path(__file__).resolve().parent.parent


def sha256_file(path: str | os.PathLike | None) -> str | None:
    import hashlib

    if not path or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def adapter_file(system=None, which: str = "speech_llm") -> Path | None:
    """The safetensors file of the adapter that runs (None for a fresh, untrained one)."""
    if system is not None:
        if which == "speech_llm" and not system.trained:
            return None
        config = system.config
    else:
        from semollama_core import SEmoConfig

        config = SEmoConfig.from_env()
    location = {"speech_llm": config.adapter, "neutral_aligned": config.neutral_adapter,
                "other_language": config.resolved_other_language_adapter()}[which]
    if not location:
        return None
    path = Path(location)
    path = path / "adapter.safetensors" if path.is_dir() else path
    return path if path.is_file() else None


def git_commit() -> str | None:
    """HEAD of the checkout, with "-dirty" when tracked files differ from it."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: `python -m eval.X ...` for a module run with -m."""
    import shlex

    argv = list(sys.argv if argv is None else argv)
    head = argv[0] if argv else ""
    try:
        rel = Path(head).resolve().relative_to(REPO_ROOT)
        if rel.suffix == ".py":
            parts = list(rel.with_suffix("").parts)
            head = "python -m " + ".".join(parts[:-1] if parts[-1] == "__main__" else parts)
            return " ".join([head, *map(shlex.quote, argv[1:])])
    except ValueError:
        pass
    return shlex.join(argv)


def run_meta(manifest: str | os.PathLike | None = None, system=None, **extra) -> dict:
    """The top-level `meta` of every eval JSON: which adapter (sha256 of its safetensors),
    manifest, commit, machine, command and date produced it."""
    neutral = adapter_file(system, "neutral_aligned")
    meta = {"adapter_sha256": sha256_file(adapter_file(system)),
            "adapter": str(adapter_file(system)) if adapter_file(system) else None,
            "neutral_adapter_sha256": sha256_file(neutral),
            # the language router's adapter for clips not heard as English (None: no routing)
            "other_language_adapter_sha256": sha256_file(adapter_file(system, "other_language")),
            "english_threshold": system.config.english_threshold if system is not None else None,
            "manifest_sha256": sha256_file(manifest), "manifest": str(Path(manifest).resolve()) if manifest else None,
            "commit": git_commit(), "machine": machine(), "command": command_line(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    meta.update(extra)
    return meta


def meta_path(predictions: str | os.PathLike) -> Path:
    """The run's meta beside its raw predictions (read back by --rescore)."""
    predictions = Path(predictions)
    return predictions.with_name(predictions.name + ".meta.json")


def write_predictions(path: str | os.PathLike, rows: Iterable[dict], meta: dict) -> Path:
    """Raw predictions (JSONL) and, beside them, the meta of the run that made them."""
    write_json(meta_path(path), meta)
    return write_jsonl(path, rows)


def rescored_meta(predictions: str | os.PathLike) -> dict:
    """Meta of a rescoring: the original run's (adapter, manifest, commit) when saved, plus
    this command and date."""
    original = {}
    if meta_path(predictions).is_file():
        original = json.loads(meta_path(predictions).read_text())
    now = run_meta(None)
    return {**{k: original.get(k) for k in ("adapter_sha256", "adapter", "neutral_adapter_sha256",
                                              "other_language_adapter_sha256", "english_threshold",
                                              "manifest_sha256", "manifest")},
            "commit": now["commit"], "machine": now["machine"], "command": now["command"], "date": now["date"],
            "rescored_from": str(Path(predictions).resolve()), "original_run": original or None}


# ----------------------------------------------------------------------------- files

def write_json(path: str | os.PathLike, data: dict) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Raw predictions written by write_jsonl; a bad line is named by file:line."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: predictions file not found.")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{lineno}: not JSON ({e.msg}).") from None
            if not isinstance(row, dict):
                raise EvalError(f"{path}:{lineno}: expected a JSON object.")
            rows.append(row)
    if not rows:
        raise EvalError(f"{path}: no predictions.")
    return rows


def predictions_path(out: str | os.PathLike) -> Path:
    """Raw predictions live next to the scored JSON: FILE.json -> FILE.predictions.jsonl."""
    out = Path(out)
    return out.with_name(out.stem + ".predictions.jsonl")


def check_out_path(out: str | os.PathLike, suffix: str = ".json") -> Path:
    out = Path(out)
    if out.suffix != suffix:
        raise EvalError(f"--out must name a {suffix} file, not {out}.")
    if out.exists() and out.is_dir():
        raise EvalError(f"--out {out} is a folder.")
    return out


def save_figure(fig, stem: str | os.PathLike) -> dict:
    """Write STEM.html and STEM.png; a PNG that cannot be made is reported, never fatal."""
    stem = Path(stem)
    html = stem.with_name(stem.name + ".html")
    atomic_write_text(html, fig.to_html(include_plotlyjs="cdn", full_html=True))
    out = {"html": str(html), "png": None}
    import logging

    for name in ("choreographer", "kaleido"):  # they log recoverable browser chatter as tracebacks
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if Path("/usr/bin/chromium").is_file():  # kaleido's browser finder looks here
        os.environ.setdefault("BROWSER_PATH", "/usr/bin/chromium")
    png = stem.with_name(stem.name + ".png")
    try:
        atomic_write(png, lambda tmp: fig.write_image(str(tmp), width=fig.layout.width or 900,
                                                      height=fig.layout.height or 600))
        out["png"] = str(png)
    except Exception as e:  # kaleido/Chromium problems must not lose the results
        out["png_error"] = " ".join(str(e).split())[:300] or type(e).__name__
    return out


def metadata(manifest: str | os.PathLike | None, system=None, **extra) -> dict:
    import torch

    meta = {"manifest": str(Path(manifest).resolve()) if manifest else None,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpu_count": os.cpu_count(), "torch": torch.__version__,
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    if system is not None:
        meta["config"] = {**system.config.to_dict(), "describe": system.describe()}
    meta.update(extra)
    return meta


# ----------------------------------------------------------------------------- command lines

def run_cli(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run a command; any bad input ends with one `error:` line on stderr and exit status 1."""
    from semollama_core import quiet_libraries

    quiet_libraries()
    try:
        return int(main(sys.argv[1:] if argv is None else argv) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        print(f"error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 1


def positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def mean_or_none(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def argument_parser(prog: str, description: str):
    """argparse whose usage errors are one `error:` line (the contract of every command)."""
    import argparse

    class OneLineParser(argparse.ArgumentParser):
        def error(self, message):
            self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")

    return OneLineParser(prog=prog, description=description)


def rescore_or_evaluate(parser, args, score: Callable[[list[dict]], dict],
                        evaluate: Callable[..., dict], out: Path | None = None) -> tuple[dict, Path]:
    """The shared body of the eval commands: score saved raw rows (--rescore, no model), or
    evaluate the manifest. Returns the report and the output path (checked as a JSON file
    unless the caller checked its own, such as a folder)."""
    out = out if out is not None else check_out_path(args.out)
    if args.rescore:
        report = {**score(read_jsonl(args.rescore)),
                  "metadata": metadata(None, rescored_from=str(Path(args.rescore).resolve())),
                  "meta": rescored_meta(args.rescore)}
        return report, out
    if not args.manifest:
        parser.error("give a MANIFEST, or --rescore PREDICTIONS.jsonl")
    return evaluate(args, out), out
