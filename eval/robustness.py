"""SER under background noise: UA of every system as the SNR falls.

    python -m eval.robustness MANIFEST --out DIR [--snrs clean,20,10,5,0] [--noise white,babble,brown]
    python -m eval.robustness --rescore DIR/predictions.jsonl --out DIR

Noise is added to each clip before any system sees it (so ASR for text_only hears it
too): white Gaussian noise, babble made of four other clips of the manifest (each
looped to the clip's length and set to equal level, then summed), and (on request) brown
noise, 1/f^2 like the rumble of a fan, traffic or a handled microphone; scaled to the SNR
over the whole clip. Everything is seeded by clip path, noise kind and SNR. Writes
DIR/robustness.json, DIR/predictions.jsonl and the figure DIR/robustness.html/.png.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from semollama_core import QUANTIZATIONS
from semollama_core import Utterance, coloured_noise, mix_at_snr

from .common import (rescore_or_evaluate, AUTO_SPLIT, EvalError, argument_parser, config_labels, evaluation_rows, load_system_from_args,
                     metadata, positive_int, run_cli, run_meta, save_figure, standalone_model, write_json,
                     write_predictions)
from .ser import INTERVAL_NOTE, SER_SYSTEMS, class_scores, run_ser, ua_ci95

NOISE_KINDS = ("white", "babble", "brown")
DEFAULT_NOISE = ("white", "babble")
CLEAN = "clean"
BABBLE_TALKERS = 4
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def parse_snrs(text: str) -> list[str | float]:
    """"clean,20,10" -> ["clean", 20.0, 10.0]."""
    out: list[str | float] = []
    for item in (s.strip() for s in text.split(",")):
        if item.lower() == CLEAN:
            out.append(CLEAN)
            continue
        try:
            value = float(item)
        except ValueError:
            raise EvalError(f"--snrs: {item!r} is neither 'clean' nor a number of dB.") from None
        if not -20 <= value <= 60:
            raise EvalError(f"--snrs: {value:g} dB is outside -20..60.")
        out.append(value)
    if not out:
        raise EvalError("--snrs is empty.")
    return list(dict.fromkeys(out))


class NoiseMaker:
    """Seeded white, babble or brown noise for each clip; babble talkers are other manifest clips."""

    def __init__(self, system, pool: Sequence[Utterance], seed: int = 0):
        self.system, self.pool, self.seed = system, list(pool), seed
        self._cache: dict[str, np.ndarray] = {}

    def noise(self, kind: str, utterance: Utterance, length: int, snr_label: str) -> np.ndarray:
        rng = np.random.default_rng([self.seed, zlib.crc32(str(utterance.audio_path).encode()),
                                     zlib.crc32(f"{kind}/{snr_label}".encode())])
        if kind in ("white", "brown"):
            return coloured_noise(kind, length, rng).astype(np.float32)
        others = [u for u in self.pool if u.audio_path != utterance.audio_path]
        if not others:
            raise EvalError("Babble noise needs at least two clips in the manifest.")
        talkers = rng.choice(len(others), size=min(BABBLE_TALKERS, len(others)), replace=False)
        babble = np.zeros(length, dtype=np.float32)
        for i in talkers:
            voice = self._clip(others[int(i)])
            voice = np.roll(np.resize(voice, length), int(rng.integers(length)))  # loop, random start
            babble += voice / (np.sqrt(np.mean(voice ** 2)) + 1e-8)
        return babble

    def _clip(self, utterance: Utterance) -> np.ndarray:
        key = str(utterance.audio_path)
        if key not in self._cache:
            self._cache[key] = self.system.load(key)
        return self._cache[key]


def run_robustness(system, utterances: Sequence[Utterance], snrs: Sequence[str | float], noise_kinds: Sequence[str],
                   systems: Sequence[str], *, pool: Sequence[Utterance] | None = None, batch_size: int = 16,
                   labels: Sequence[str] | None = None, standalone=None, seed: int = 0, progress=None) -> list[dict]:
    """Raw SER predictions for every (noise kind, SNR); clean runs once, labelled noise "none"."""
    maker = NoiseMaker(system, pool or utterances, seed)
    rows: list[dict] = []
    for kind, snr in _conditions(snrs, noise_kinds):
        label = CLEAN if snr == CLEAN else f"{snr:g}"

        def add_noise(u, clip, kind=kind, snr=snr, label=label):
            return mix_at_snr(clip, maker.noise(kind, u, clip.shape[0], label), snr)

        rows += run_ser(system, utterances, systems, batch_size, progress, labels=labels, standalone=standalone,
                        transform=None if snr == CLEAN else add_noise,
                        extra={"noise": kind, "snr": label})
    return rows


def _conditions(snrs, noise_kinds):
    if CLEAN in snrs:
        yield "none", CLEAN
    for kind in noise_kinds:
        for snr in snrs:
            if snr != CLEAN:
                yield kind, snr


def score_robustness(predictions: list[dict]) -> dict:
    """{"ua": {noise: {system: {snr: UA}}}, "wa": ...}; the clean figures join every noise curve."""
    labels = list(dict.fromkeys([*(predictions[0].get("probs") or {}), *(r["emotion"] for r in predictions)]))
    groups: dict = defaultdict(list)
    for row in predictions:
        groups[(row["extra"]["noise"], row["extra"]["snr"], row["system"])].append(row)
    scored = {key: {**class_scores(rows, labels), "ua_ci95": ua_ci95(rows, labels)} for key, rows in groups.items()}
    kinds = [k for k in dict.fromkeys(n for n, _, _ in groups) if k != "none"] or ["none"]
    systems = list(dict.fromkeys(s for _, _, s in groups))
    snrs = list(dict.fromkeys(s for _, s, _ in groups))
    report = {"snrs": snrs, "noise": kinds, "systems": systems, "label_set": labels}
    for metric in ("ua", "ua_ci95", "wa"):
        report[metric] = {kind: {s: {snr: scored[(kind if snr != CLEAN else "none", snr, s)][metric]
                                     for snr in snrs if (kind if snr != CLEAN else "none", snr, s) in scored}
                                 for s in systems} for kind in kinds}
    report["n"] = {f"{n}/{snr}/{s}": len(rows) for (n, snr, s), rows in groups.items()}
    report["interval"] = INTERVAL_NOTE
    return report


def robustness_figure(report: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    dashes = {"white": "solid", "babble": "dash", "brown": "dashdot", "none": "dot"}
    colours = dict(zip(report["systems"], _PALETTE * 2))
    for kind in report["noise"]:
        for system in report["systems"]:
            curve = report["ua"][kind][system]
            ci = report.get("ua_ci95", {}).get(kind, {}).get(system, {})
            bars = None
            if ci and all(ci.get(snr) for snr in curve):
                bars = {"type": "data", "symmetric": False,
                        "array": [ci[snr][1] - curve[snr] for snr in curve],
                        "arrayminus": [curve[snr] - ci[snr][0] for snr in curve]}
            fig.add_trace(go.Scatter(x=list(curve), y=list(curve.values()), mode="lines+markers",
                                     name=f"{system} ({kind})", error_y=bars,
                                     line={"dash": dashes.get(kind, "solid"), "color": colours[system]}))
    fig.add_hline(y=1 / max(1, len(report["label_set"])), line_dash="dot", annotation_text="chance")
    fig.update_layout(title="SER unweighted accuracy under background noise (bars: 95 % sentence-resampled intervals)", xaxis_title="SNR (dB)",
                      yaxis_title="UA", yaxis_range=[0, 1], xaxis_type="category", width=900, height=550)
    return fig


def main(argv: list[str]) -> int:
    parser = argument_parser("python -m eval.robustness", "SER UA of every system under white and babble "
                             "noise at several SNRs.")
    parser.add_argument("manifest", nargs="?", help="JSONL or CSV manifest (audio, emotion, ...)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--snrs", default="clean,20,10,5,0", help="comma-separated dB values and/or 'clean'")
    parser.add_argument("--noise", default=",".join(DEFAULT_NOISE), help="comma-separated: white, babble, brown")
    parser.add_argument("--systems", default=None, help=f"comma-separated, from {','.join(SER_SYSTEMS)} "
                        "(default: every available one)")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N rows")
    parser.add_argument("--split", default=AUTO_SPLIT, help="rows to evaluate (default: test if present, else all)")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantization", choices=QUANTIZATIONS, help="override the LLM quantization")
    parser.add_argument("--rescore", metavar="PREDICTIONS.jsonl", help="score saved raw predictions; run no model")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} must be a folder.")
    report, out = rescore_or_evaluate(parser, args, score_robustness, _evaluate, out)
    report["figure"] = save_figure(robustness_figure(report), out / "robustness")
    write_json(out / "robustness.json", report)
    print(f"wrote {out / 'robustness.json'}")
    return 0


def _evaluate(args, out: Path) -> dict:
    snrs = parse_snrs(args.snrs)
    kinds = [k.strip() for k in args.noise.split(",") if k.strip()]
    if not kinds or any(k not in NOISE_KINDS for k in kinds):
        raise EvalError(f"--noise must list kinds from {', '.join(NOISE_KINDS)}, not {args.noise!r}.")
    rows, labels, notes, all_rows = evaluation_rows(args.manifest, config_labels(args.quantization),
                                                    split=args.split, limit=args.limit)
    if "babble" in kinds and len(all_rows) < 2:
        raise EvalError("Babble noise needs at least two clips in the manifest; use --noise white.")
    system = load_system_from_args(args.quantization)
    systems = _systems(system, args.systems, notes)
    standalone = standalone_model(system, all_rows, labels, notes) if "standalone" in systems else None
    if "standalone" in systems and standalone is None:
        systems.remove("standalone")
    predictions = run_robustness(system, rows, snrs, kinds, systems, pool=all_rows, batch_size=args.batch_size,
                                 labels=labels, standalone=standalone, seed=args.seed)
    meta = run_meta(args.manifest, system, split=args.split, limit=args.limit, seed=args.seed, noise=kinds,
                    snrs=args.snrs, systems=systems)
    write_predictions(out / "predictions.jsonl", predictions, meta)
    return {**score_robustness(predictions), "notes": notes, "meta": meta,
            "metadata": metadata(args.manifest, system, split=args.split, limit=args.limit, seed=args.seed,
                                 predictions=str(out / "predictions.jsonl"))}


def _systems(system, text: str | None, notes: list[str]) -> list[str]:
    names = [s.strip() for s in (text or ",".join(SER_SYSTEMS)).split(",") if s.strip()]
    unknown = [s for s in names if s not in SER_SYSTEMS]
    if unknown or not names:
        raise EvalError(f"Unknown system in --systems {text!r}; choose from {', '.join(SER_SYSTEMS)}.")
    if "neutral_aligned" in names and system.neutral_adapter is None:
        names.remove("neutral_aligned")
        notes.append("neutral_aligned: no adapter at config neutral_adapter; skipped.")
    return names


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
