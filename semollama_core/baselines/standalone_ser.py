"""Standalone speech emotion recognition: openSMILE eGeMAPS functionals + a linear classifier.

The classic SER model of the `cascade` system and the `standalone` baseline in evaluation.
scikit-learn fits the multinomial logistic regression; the saved model is one small JSON
file (scaler, coefficients, labels, feature set) so loading and prediction need only numpy
and opensmile, and no pickle is ever read.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import threading

import numpy as np

from ..files import atomic_write_text
from ..model.audio import SAMPLE_RATE, load_audio
from ..corpus.manifest import Utterance, iter_manifest

__all__ = ["StandaloneSER", "StandaloneSERError", "SEROptions", "extract_features",
           "train_standalone_ser", "main"]

FEATURE_SET = "eGeMAPSv02"
MODEL_FILE = "standalone_ser.json"
FORMAT_NAME = "semollama-standalone-ser"
FORMAT_VERSION = 1
DEV_SPLITS = ("dev", "val", "valid", "validation")
RETRAIN_HINT = "retrain with: python -m semollama_core train-ser MANIFEST --out FOLDER"


class StandaloneSERError(ValueError):
    """Unusable input, training data or saved model, explained in one sentence."""


@dataclass(frozen=True)
class SEROptions:
    # Inverse L2 regularisation strength of the logistic regression.
    c: float = 1.0
    # Weight classes by inverse frequency, since evaluation reports UA (mean per-class recall).
    balanced: bool = True
    max_iter: int = 2000

    def __post_init__(self):
        if not self.c > 0:
            raise StandaloneSERError(f"c must be positive, not {self.c}.")
        if self.max_iter < 1:
            raise StandaloneSERError(f"max_iter must be at least 1, not {self.max_iter}.")


_local = threading.local()


def _smile():
    """One openSMILE extractor per thread: never shared by concurrent users, and not rebuilt
    for every clip (8 of its 45 ms)."""
    import opensmile

    if getattr(_local, "smile", None) is None:
        _local.smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                       feature_level=opensmile.FeatureLevel.Functionals)
    return _local.smile


def feature_names() -> list[str]:
    """The names of the 88 eGeMAPS v02 functionals, in extract_features' column order."""
    return list(_smile().feature_names)


def extract_features(waveforms: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
    """eGeMAPS v02 functionals [n, 88] of 16 kHz mono clips."""
    from tqdm.auto import tqdm

    smile = _smile()
    rows = []
    for i, waveform in enumerate(tqdm(waveforms, desc="eGeMAPS", unit="clip", disable=not progress)):
        signal = _checked_waveform(waveform, i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Segment too short" is reported below as an error
            row = smile.process_signal(signal, SAMPLE_RATE).to_numpy(dtype=np.float64)[0]
        if not np.isfinite(row).all():
            raise StandaloneSERError(f"Clip {i} ({signal.shape[0] / SAMPLE_RATE * 1000:.0f} ms) is "
                                     "too short for eGeMAPS features; use at least 100 ms of audio.")
        rows.append(row)
    return np.stack(rows) if rows else np.zeros((0, len(smile.feature_names)))


def _checked_waveform(waveform: np.ndarray, index: int) -> np.ndarray:
    signal = np.asarray(waveform)
    if signal.ndim != 1 or signal.shape[0] == 0 or signal.dtype.kind != "f":
        raise StandaloneSERError(f"Clip {index} must be a non-empty 1-D float array of 16 kHz mono "
                                 f"samples, got shape {signal.shape} and dtype {signal.dtype}.")
    if not np.isfinite(signal).all():
        raise StandaloneSERError(f"Clip {index} contains NaN or infinite samples.")
    return signal.astype(np.float32)


class StandaloneSER:
    """Standardised eGeMAPS functionals -> multinomial logistic regression."""

    def __init__(self, options: SEROptions = SEROptions()):
        self.options = options
        self.labels: tuple[str, ...] = ()
        self.feature_set = FEATURE_SET
        self.mean = self.scale = self.coef = self.intercept = None  # set by fit or load

    def fit(self, waveforms: Sequence[np.ndarray], labels: Sequence[str],
            label_order: Sequence[str] | None = None, progress: bool = True) -> "StandaloneSER":
        """Train on clips and their emotion names; label_order fixes the output columns."""
        if len(waveforms) != len(labels):
            raise StandaloneSERError(f"Got {len(waveforms)} clips but {len(labels)} labels.")
        _label_set([str(x) for x in labels], label_order)  # fail before the slow extraction
        return self.fit_features(extract_features(waveforms, progress), labels, label_order)

    def fit_features(self, features: np.ndarray, labels: Sequence[str],
                     label_order: Sequence[str] | None = None) -> "StandaloneSER":
        """Train on precomputed eGeMAPS features [n, 88] (training reuses them for train UA)."""
        from sklearn.linear_model import LogisticRegression

        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] != len(labels):
            raise StandaloneSERError(f"Got features of shape {features.shape} for {len(labels)} labels.")
        label_set = _label_set([str(x) for x in labels], label_order)
        mean, std = features.mean(axis=0), features.std(axis=0)
        scale = np.where(std > 1e-12, std, 1.0)  # constant features: leave unscaled
        targets = np.array([label_set.index(str(x)) for x in labels])
        model = LogisticRegression(C=self.options.c, max_iter=self.options.max_iter,
                                   class_weight="balanced" if self.options.balanced else None)
        model.fit((features - mean) / scale, targets)
        # Assigned only once fitting succeeded, so a failed fit leaves no half-trained model.
        self.labels, self.mean, self.scale = label_set, mean, scale
        self.coef, self.intercept = _softmax_parameters(model.coef_, model.intercept_)
        return self

    def predict_proba(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities [n, len(self.labels)], rows summing to 1."""
        self._check_trained()
        return self.proba_from_features(extract_features(waveforms))

    def proba_from_features(self, features: np.ndarray) -> np.ndarray:
        self._check_trained()
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.mean.shape[0]:
            raise StandaloneSERError(f"Expected features [n, {self.mean.shape[0]}], got {features.shape}.")
        logits = self._standardised(features) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)  # stable softmax
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def predict(self, waveforms: Sequence[np.ndarray]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(waveforms).argmax(axis=1)]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write folder/standalone_ser.json atomically; returns its path."""
        self._check_trained()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MODEL_FILE
        state = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "feature_set": self.feature_set,
                 "labels": list(self.labels), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                 "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}
        # json writes floats with repr, so a reload reproduces every weight bit for bit.
        atomic_write_text(path, json.dumps(state))  # the file ships in assets/: 0644
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "StandaloneSER":
        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise StandaloneSERError(f"No standalone SER model at {path}; {RETRAIN_HINT}.")
        try:
            state = json.loads(path.read_text())
            model = cls._from_state(state)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise StandaloneSERError(f"The standalone SER model {path} is corrupt ({_short(e)}); "
                                     f"{RETRAIN_HINT}.") from None
        return model

    @classmethod
    def _from_state(cls, state: dict) -> "StandaloneSER":
        if not isinstance(state, dict) or (state.get("format"), state.get("version")) != (FORMAT_NAME,
                                                                                       FORMAT_VERSION):
            raise ValueError(f"not a version-{FORMAT_VERSION} {FORMAT_NAME} file")
        if state["feature_set"] != FEATURE_SET:
            raise ValueError(f"feature set {state['feature_set']!r}, expected {FEATURE_SET!r}")
        model = cls()
        model.labels = tuple(str(x) for x in state["labels"])
        model.mean, model.scale, model.coef, model.intercept = (
            np.asarray(state[k], dtype=np.float64) for k in ("mean", "scale", "coef", "intercept"))
        n_labels, n_features = len(model.labels), model.mean.shape[0] if model.mean.ndim == 1 else -1
        shapes_ok = (len(set(model.labels)) == n_labels >= 2 and n_features > 0
                     and model.scale.shape == (n_features,)
                     and model.coef.shape == (n_labels, n_features) and model.intercept.shape == (n_labels,))
        if not shapes_ok or not all(np.isfinite(a).all() for a in (model.mean, model.scale, model.coef,
                                                                  model.intercept)):
            raise ValueError("weights have inconsistent shapes or non-finite values")
        return model

    def _standardised(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.scale

    def _check_trained(self) -> None:
        if self.coef is None:
            raise StandaloneSERError("This StandaloneSER is not trained; call fit() or StandaloneSER.load().")


def _label_set(labels: list[str], label_order: Sequence[str] | None) -> tuple[str, ...]:
    present = sorted(set(labels))
    if label_order is None:
        label_order = present
    label_order = tuple(str(x) for x in label_order)
    if len(set(label_order)) != len(label_order):
        raise StandaloneSERError(f"The label set {list(label_order)} repeats a label.")
    missing = [x for x in label_order if x not in present]
    unknown = [x for x in present if x not in label_order]
    if missing or unknown:
        raise StandaloneSERError(f"Training labels must match the label set: missing examples of "
                                 f"{missing}, labels outside the set {unknown}.")
    if len(label_order) < 2:
        raise StandaloneSERError(f"Need at least two emotion labels to train, got {list(label_order)}.")
    return label_order


def _softmax_parameters(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn keeps one weight row for two classes; softmax over [0, w] is the same sigmoid."""
    if coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    return coef.astype(np.float64), intercept.astype(np.float64)


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _mean_class_recall(true: Sequence[str], predicted: Sequence[str]) -> float:
    """UA: recall averaged over the classes present in `true`."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    return float(np.mean([(predicted[true == c] == c).mean() for c in np.unique(true)]))


# ---------------------------------------------------------------- training from a manifest

def train_standalone_ser(manifest_path: str | os.PathLike, out_folder: str | os.PathLike,
                         split: str = "train", labels: Sequence[str] | None = None,
                         options: SEROptions = SEROptions()) -> StandaloneSER:
    """Train on the manifest rows of `split`, print train and dev UA, save to out_folder.

    labels: label set and output order; rows with other emotions are left out.
    """
    rows = [u for u in iter_manifest(manifest_path, require_emotion=True)
            if labels is None or u.emotion in labels]
    train_rows = [u for u in rows if u.split == split]
    if not train_rows:
        raise StandaloneSERError(f"{manifest_path} has no rows with split {split!r}"
                                 + (f" and an emotion in {list(labels)}." if labels else "."))
    train_labels = [u.emotion for u in train_rows]
    label_set = _label_set(train_labels, labels)
    print(f"training on {len(train_rows)} clips of split {split!r}, labels {list(label_set)}")
    features = extract_features(_LazyWaveforms(train_rows), progress=True)
    model = StandaloneSER(options).fit_features(features, train_labels, label_set)
    train_pred = [label_set[i] for i in model.proba_from_features(features).argmax(axis=1)]
    print(f"train UA {_mean_class_recall(train_labels, train_pred):.4f} (n={len(train_rows)})")
    _report_dev(model, [u for u in rows if u.split in DEV_SPLITS and u.emotion in label_set])
    print(f"saved {model.save(out_folder)}")
    return model


def _report_dev(model: StandaloneSER, dev_rows: list[Utterance]) -> None:
    if not dev_rows:
        print(f"dev UA: no rows with split in {DEV_SPLITS}")
        return
    dev_features = extract_features(_LazyWaveforms(dev_rows), progress=True)
    dev_pred = [model.labels[i] for i in model.proba_from_features(dev_features).argmax(axis=1)]
    print(f"dev UA {_mean_class_recall([u.emotion for u in dev_rows], dev_pred):.4f} (n={len(dev_rows)})")


class _LazyWaveforms:
    """Sized, lazily loaded 16 kHz mono clips: one in memory at a time, and tqdm sees a length."""

    def __init__(self, utterances: list[Utterance]):
        self.utterances = utterances

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self):
        return (load_audio(u.audio_path) for u in self.utterances)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m semollama_core train-ser MANIFEST --out FOLDER`."""
    parser = argparse.ArgumentParser(
        prog="python -m semollama_core train-ser",
        description="Train the standalone SER model (openSMILE eGeMAPS + logistic regression) "
                    "on a manifest's training split; prints train and dev UA.")
    parser.add_argument("manifest", help="JSONL or CSV manifest with audio, emotion and split fields")
    parser.add_argument("--out", required=True, help="folder to write standalone_ser.json into")
    parser.add_argument("--split", default="train", help="split to train on (default: train)")
    parser.add_argument("--labels", help="comma-separated label set and order; other rows are skipped")
    parser.add_argument("--c", type=float, default=SEROptions.c, help="inverse L2 strength (default: 1.0)")
    args = parser.parse_args(argv)
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    try:
        train_standalone_ser(args.manifest, args.out, split=args.split, labels=labels,
                             options=SEROptions(c=args.c))
    except (ValueError, OSError) as e:  # AudioError, ManifestError, StandaloneSERError
        print(f"error: {_short(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
