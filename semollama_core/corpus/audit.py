"""Artefact audit: can a shallow classifier name the emotion without hearing prosody?

A corpus whose labels ride on processing (a low-pass on every sad clip, clipping on every
angry one, digital silence in pauses) teaches a model to spot the filter, not the feeling
(EXPRESSIVE_SPEECH.md). The audit measures that leak: it describes every clip by features
that are not prosody -- digital-zero runs, clipped share, 99.5 % spectral roll-off, peak,
crest factor, leading and trailing silence, duration -- and cross-validates a depth-3
decision tree and a logistic regression on them, grouped by sentence (the transcript;
else the speaker; else the clip), so no sentence is both fitted and scored. UA near
chance (0.25 for four labels) means the processing is independent of the label.

    python -m semollama_core audit data/synth_v2/manifest.jsonl --out audit.json
    -> {"ua": .., "ua_ci95": [lo, hi], "n": .., "chance": .., "classifiers": {..},
        "features": [..], "single_feature_ua": {..}, "meta": {..}}

`ua` is the higher of the two classifiers' out-of-fold UA (the audit is on the side of
finding a leak); `ua_ci95` is its 95 % bootstrap interval, resampling whole groups.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write_text
from ..metrics import unweighted_accuracy
from ..model.audio import frame_levels_db

__all__ = ["AuditError", "FEATURES", "WARN_UA", "clip_features", "audit_manifest", "main"]

FEATURES = ("zero_run_max_s", "zero_share", "clipped_share", "rolloff_995_hz", "peak_dbfs",
            "crest_db", "lead_silence_s", "trail_silence_s", "duration_s")
WARN_UA = 0.35          # synth warns above this (issue 12's acceptance line)
FOLDS = 5
TREE_DEPTH = 3
BOOTSTRAP_RESAMPLES = 2000
SEED = 0                # fixed: the same corpus always gives the same figures
ZERO_RUN_MIN = 16       # samples: shorter runs of exact zeros happen at zero crossings of quiet PCM16
SILENCE_FLOOR_DB = 40.0 # a frame this far below the loudest one counts as silence


class AuditError(ValueError):
    """A manifest the audit cannot use; the message is one line."""


# ---------------------------------------------------------------- features


def _runs(mask: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True in a boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return edges[1::2] - edges[0::2]


def _rolloff(samples: np.ndarray, rate: int, share: float = 0.995) -> float:
    """The frequency below which `share` of the clip's long-term power lies."""
    from scipy.signal import welch

    _, power = welch(samples, rate, nperseg=min(1024, len(samples)))
    freqs = np.linspace(0, rate / 2, len(power))
    cumulative = np.cumsum(power)
    if cumulative[-1] <= 0:
        return 0.0
    return float(freqs[np.searchsorted(cumulative, share * cumulative[-1])])


def _clipped_share(x: np.ndarray, peak: float) -> float:
    """Share of samples in flat tops at the clip's own peak (runs of 3 or more): clipping
    survives a later gain change, and a clean clip's single peak sample does not count
    (1/length would make this a proxy for duration)."""
    if peak <= 0:
        return 0.0
    runs = _runs(np.abs(x) >= 0.999 * peak)
    return float(runs[runs >= 3].sum()) / len(x)


def clip_features(samples: np.ndarray, rate: int) -> dict[str, float]:
    """The audit's non-prosodic description of one clip, on its samples as stored."""
    x = np.asarray(samples, dtype=np.float64)
    zero_runs = _runs(x == 0.0)
    zero_runs = zero_runs[zero_runs >= ZERO_RUN_MIN]
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    rms = float(np.sqrt(np.mean(x ** 2))) if x.size else 0.0
    db = frame_levels_db(x, rate)
    active = np.flatnonzero(db > db.max() - SILENCE_FLOOR_DB)
    hop_s = int(0.01 * rate) / rate
    lead = active[0] * hop_s if active.size else len(x) / rate
    trail = max(0.0, len(x) / rate - (active[-1] * hop_s + 0.02)) if active.size else 0.0
    return {
        "zero_run_max_s": float(zero_runs.max()) / rate if zero_runs.size else 0.0,
        "zero_share": float(zero_runs.sum()) / max(len(x), 1),
        "clipped_share": _clipped_share(x, peak),
        "rolloff_995_hz": _rolloff(x, rate),
        "peak_dbfs": 20 * np.log10(peak + 1e-12),
        "crest_db": 20 * np.log10((peak + 1e-12) / (rms + 1e-12)),
        "lead_silence_s": float(lead),
        "trail_silence_s": float(trail),
        "duration_s": len(x) / rate,
    }


def _file_features(path: Path) -> dict[str, float]:
    import soundfile as sf

    from ..model.audio import MIN_DURATION_S

    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if len(samples) < MIN_DURATION_S * rate:
        raise AuditError(f"{path}: {len(samples) / rate:.2f} s long, shorter than the minimum "
                         f"{MIN_DURATION_S} s")
    return clip_features(samples.mean(axis=1), rate)


# ---------------------------------------------------------------- the audit


@dataclass(frozen=True)
class _Rows:
    paths: list[Path]
    labels: list[str]
    groups: list[str]
    group_by: str


def _read_rows(manifest: Path) -> _Rows:
    from .manifest import ManifestError, iter_manifest

    try:
        utterances = list(iter_manifest(manifest, require_emotion=True))
    except ManifestError as error:
        raise AuditError(str(error)) from None
    if not utterances:
        raise AuditError(f"{manifest}: no rows")
    for key in ("transcript", "speaker"):
        values = [getattr(u, key) for u in utterances]
        if all(values) and len(set(values)) >= 2:
            groups = [" ".join(str(v).lower().split()) for v in values]
            return _Rows([u.audio_path for u in utterances], [u.emotion for u in utterances],
                         groups, key)
    return _Rows([u.audio_path for u in utterances], [u.emotion for u in utterances],
                 [str(u.audio_path) for u in utterances], "clip")


def _ua_interval(labels, predicted, groups, classes) -> list[float]:
    """95 % percentile interval of UA, resampling whole groups (they are not independent)."""
    keys, member = np.unique(groups, return_inverse=True)
    totals = np.zeros((len(keys), len(classes)))
    hits = np.zeros((len(keys), len(classes)))
    for g, label, guess in zip(member, labels, predicted):
        c = classes.index(label)
        totals[g, c] += 1
        hits[g, c] += label == guess
    picks = np.random.default_rng(SEED).integers(0, len(keys), (BOOTSTRAP_RESAMPLES, len(keys)))
    counts = np.zeros((BOOTSTRAP_RESAMPLES, len(keys)))
    np.add.at(counts, (np.arange(BOOTSTRAP_RESAMPLES)[:, None], picks), 1)
    t, h = counts @ totals, counts @ hits
    present = t > 0
    ua = np.where(present, h / np.maximum(t, 1), 0).sum(1) / np.maximum(present.sum(1), 1)
    return [round(float(np.percentile(ua, 2.5)), 4), round(float(np.percentile(ua, 97.5)), 4)]


def _classifiers() -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    return {
        "tree_depth3": DecisionTreeClassifier(max_depth=TREE_DEPTH, class_weight="balanced",
                                              random_state=SEED),
        "logistic": make_pipeline(StandardScaler(),
                                  LogisticRegression(max_iter=2000, class_weight="balanced")),
    }


def _out_of_fold(model, x: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    from sklearn.base import clone
    from sklearn.model_selection import GroupKFold

    folds = min(FOLDS, len(np.unique(groups)))
    predicted = np.empty(len(labels), dtype=object)
    for fit, score in GroupKFold(n_splits=folds).split(x, labels, groups):
        if len(np.unique(labels[fit])) < 2:  # one class only: it can only guess that class
            predicted[score] = labels[fit][0]
            continue
        predicted[score] = clone(model).fit(x[fit], labels[fit]).predict(x[score])
    return predicted


def _transformed(x: np.ndarray) -> np.ndarray:
    """Log of the shares and times, so the logistic regression sees spread-out values."""
    x = x.copy()
    for i, name in enumerate(FEATURES):
        if name.endswith(("_share", "_s")):
            x[:, i] = np.log10(x[:, i] + 1e-6)
    return x


def audit_features(features: np.ndarray, labels, groups) -> dict:
    """The audit of a feature matrix [clips, FEATURES]; see the module docstring."""
    labels, groups = np.asarray(labels, dtype=object), np.asarray(groups, dtype=object)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise AuditError(f"the audit needs at least 2 labels, found {classes}")
    if len(np.unique(groups)) < 2:
        raise AuditError("the audit needs at least 2 sentences (or speakers) to cross-validate")
    x = _transformed(features)
    results = {}
    for name, model in _classifiers().items():
        predicted = _out_of_fold(model, x, labels, groups)
        results[name] = {"ua": round(unweighted_accuracy(labels, predicted, classes), 4),
                         "ua_ci95": _ua_interval(labels, predicted, groups, classes)}
    best = max(results, key=lambda k: results[k]["ua"])
    tree = _classifiers()["tree_depth3"]
    single = {}
    for i, name in enumerate(FEATURES):  # which feature leaks, if any
        predicted = _out_of_fold(tree, x[:, [i]], labels, groups)
        single[name] = round(unweighted_accuracy(labels, predicted, classes), 4)
    return {"ua": results[best]["ua"], "ua_ci95": results[best]["ua_ci95"], "n": int(len(labels)),
            "classifier": best, "chance": round(1 / len(classes), 4), "labels": classes,
            "classifiers": results, "single_feature_ua": single,
            "groups": int(len(np.unique(groups))), "folds": min(FOLDS, len(np.unique(groups))),
            "features": list(FEATURES),
            "class_means": {c: dict(zip(FEATURES, np.round(features[labels == c].mean(0), 4).tolist()))
                            for c in classes}}


def audit_manifest(manifest: str | os.PathLike, *, split: str | None = None) -> dict:
    """Read every clip of the manifest (or one split of it) and audit it."""
    manifest = Path(manifest)
    rows = _read_rows(manifest)
    keep = [i for i in range(len(rows.paths))]
    if split is not None:
        from .manifest import iter_manifest

        wanted = {u.audio_path for u in iter_manifest(manifest, split=split)}
        keep = [i for i, p in enumerate(rows.paths) if p in wanted]
    try:
        features = np.array([[f[k] for k in FEATURES] for f in
                             (_file_features(rows.paths[i]) for i in keep)])
    except (RuntimeError, OSError) as error:  # soundfile's LibsndfileError is a RuntimeError
        raise AuditError(f"cannot read a clip of {manifest}: {' '.join(str(error).split())}") from None
    result = audit_features(features, [rows.labels[i] for i in keep], [rows.groups[i] for i in keep])
    result["grouped_by"] = rows.group_by
    if split is not None:
        result["split"] = split
    return result


# ---------------------------------------------------------------- provenance


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def audit_meta(manifest: Path, argv: list[str] | None = None) -> dict:
    return {"manifest": str(manifest.resolve()), "manifest_sha256": _sha256(manifest),
            "commit": _git_commit(),
            "command": "python -m semollama_core audit " + shlex.join(argv or []),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "python": platform.python_version()}}


def write_audit(manifest: str | os.PathLike, out: str | os.PathLike, *, split: str | None = None,
                argv: list[str] | None = None) -> dict:
    """Audit the manifest and write the JSON atomically; returns the result."""
    manifest, out = Path(manifest), Path(out)
    if not manifest.is_file():
        raise AuditError(f"{manifest}: manifest not found")
    result = audit_manifest(manifest, split=split)
    result["meta"] = audit_meta(manifest, argv)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    return result


def summary(result: dict) -> str:
    lo, hi = result["ua_ci95"]
    leak = max(result["single_feature_ua"], key=result["single_feature_ua"].get)
    return (f"artefact audit: UA {result['ua']:.3f} [{lo:.3f}, {hi:.3f}] on n={result['n']} "
            f"({result['classifier']}, chance {result['chance']:.2f}; strongest single feature "
            f"{leak} {result['single_feature_ua'][leak]:.3f})")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m semollama_core audit",
        description="Artefact audit: UA of a shallow classifier (depth-3 tree, logistic "
                    "regression) on non-prosodic features only, cross-validated by sentence. "
                    f"Near chance is good; above {WARN_UA} the corpus leaks its labels.")
    parser.add_argument("manifest", type=Path, help="manifest (JSONL or CSV) with emotion labels")
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--split", default=None, help="audit only this split")
    args = parser.parse_args(argv)
    try:
        result = write_audit(args.manifest, args.out, split=args.split, argv=argv)
    except AuditError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary(result))
    if result["ua"] > WARN_UA:
        print(f"warning: UA {result['ua']:.3f} is above {WARN_UA}: the labels ride on processing, "
              "not only prosody", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
