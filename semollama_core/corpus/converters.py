"""Corpus converters: public corpora (RAVDESS, CREMA-D, IEMOCAP, Hugging Face `datasets`)
turned into manifests (see `manifest.py`)."""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

from ..files import atomic_write
from .manifest import ManifestError, ManifestWarning, write_manifest

__all__ = ["ravdess_manifest", "cremad_manifest", "iemocap_manifest", "hf_dataset_manifest"]


def _corpus_root(root: str | os.PathLike, corpus: str) -> Path:
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise ManifestError(f"{path}: {corpus} folder not found")
    return path


def _write_corpus_manifest(out: str | os.PathLike, rows: list[dict], corpus: str, root: Path, unknown: list[str]) -> Path:
    if unknown:
        warnings.warn(
            f"{root}: {len(unknown)} files do not follow {corpus} naming and were left out (e.g. {unknown[0]})",
            ManifestWarning,
            stacklevel=3,
        )
    if not rows:
        raise ManifestError(f"{root}: no {corpus} audio files found")
    return write_manifest(out, rows)


RAVDESS_EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}  # fmt: skip
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def ravdess_manifest(root: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Manifest of the RAVDESS wavs under root (names like 03-01-05-01-02-01-12.wav).

    Fields: modality-vocal channel-emotion-intensity-statement-repetition-actor.
    speaker is the actor (odd male, even female); intensity, vocal channel, gender and
    repetition go to extra. `out` must lie in a folder that contains root.
    """
    root = _corpus_root(root, "RAVDESS")
    rows, unknown = [], []
    for wav in sorted(root.rglob("*.wav")):
        row = _ravdess_row(wav)
        if row is None:
            unknown.append(wav.name)
        else:
            rows.append(row)
    return _write_corpus_manifest(out, rows, "RAVDESS", root, unknown)


def _ravdess_row(wav: Path) -> dict | None:
    match = RAVDESS_NAME.match(wav.stem)
    if match is None:
        return None
    _modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    if emotion not in RAVDESS_EMOTIONS or statement not in RAVDESS_STATEMENTS or channel not in ("01", "02"):
        return None
    return {
        "audio": wav,
        "emotion": RAVDESS_EMOTIONS[emotion],
        "transcript": RAVDESS_STATEMENTS[statement],
        "speaker": f"ravdess_{actor}",
        "corpus": "ravdess",
        "gender": "male" if int(actor) % 2 else "female",
        "intensity": "strong" if intensity == "02" else "normal",
        "vocal_channel": "song" if channel == "02" else "speech",
        "repetition": int(repetition),
    }


CREMAD_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CREMAD_SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
CREMAD_LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified", "X": "unspecified"}
CREMAD_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$")


def cremad_manifest(root: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Manifest of the CREMA-D wavs under root (names like 1001_DFA_ANG_XX.wav).

    Fields: actor_sentence_emotion_level. A VideoDemographics.csv anywhere under root
    adds each actor's sex as `gender`. `out` must lie in a folder that contains root.
    """
    root = _corpus_root(root, "CREMA-D")
    genders = _cremad_genders(root)
    rows, unknown = [], []
    for wav in sorted(root.rglob("*.wav")):
        match = CREMAD_NAME.match(wav.stem)
        if match is None or match[2] not in CREMAD_SENTENCES or match[3] not in CREMAD_EMOTIONS:
            unknown.append(wav.name)
            continue
        actor, sentence, emotion, level = match.groups()
        rows.append({
            "audio": wav,
            "emotion": CREMAD_EMOTIONS[emotion],
            "transcript": CREMAD_SENTENCES[sentence],
            "speaker": f"cremad_{actor}",
            "corpus": "cremad",
            "gender": genders.get(actor),
            "intensity": CREMAD_LEVELS.get(level, "unspecified"),
        })  # fmt: skip
    return _write_corpus_manifest(out, rows, "CREMA-D", root, unknown)


def _cremad_genders(root: Path) -> dict[str, str]:
    """ActorID -> 'male'/'female' from VideoDemographics.csv, if the corpus has it."""
    for table in root.rglob("VideoDemographics.csv"):
        with open(table, encoding="utf-8", errors="replace", newline="") as f:
            return {
                row["ActorID"].strip(): row["Sex"].strip().lower()
                for row in csv.DictReader(f)
                if row.get("ActorID") and row.get("Sex")
            }
    return {}


IEMOCAP_LABELS = {
    "neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry",
    "fru": "frustrated", "fea": "fearful", "sur": "surprised", "dis": "disgust", "oth": "other",
}  # fmt: skip
# The usual four-class setup: excited merged into happy, every other class dropped.
IEMOCAP_FOUR_CLASS = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}
IEMOCAP_EVALUATION = re.compile(
    r"^\[(\d+(?:\.\d*)?) - (\d+(?:\.\d*)?)\]\t(Ses\S+)\t(\w+)\t\[([^\]]*)\]"
)  # fmt: skip
IEMOCAP_TRANSCRIPT = re.compile(r"^(Ses\S+) \[[\d.]+-[\d.]+\]:\s?(.*)$")
IEMOCAP_TEST_SESSION = 5


def iemocap_manifest(root: str | os.PathLike, out: str | os.PathLike, four_class: bool = True) -> Path:
    """Manifest of IEMOCAP from Session*/dialog/EmoEvaluation/*.txt label files.

    Audio: Session*/sentences/wav/<dialog>/<utterance>.wav; transcripts from
    Session*/dialog/transcriptions/<dialog>.txt. four_class keeps neutral, happy (with
    excited), sad, angry; otherwise every class but "xxx" (no agreement) is kept.
    speaker is session + gender (Ses01F); Session5 is the test split, the rest train.
    """
    root = _corpus_root(root, "IEMOCAP")
    label_names = IEMOCAP_FOUR_CLASS if four_class else IEMOCAP_LABELS
    sessions = sorted(p for p in root.glob("Session*") if p.is_dir())
    if not sessions:
        raise ManifestError(f"{root}: no Session* folders (is this the IEMOCAP release folder?)")
    rows, missing = [], []
    for session in sessions:
        transcripts = _iemocap_transcripts(session / "dialog" / "transcriptions")
        for label_file in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
            if label_file.name.startswith("._"):  # macOS resource forks in some copies
                continue
            for evaluation in _iemocap_evaluations(label_file):
                row = _iemocap_row(session, evaluation, label_names, transcripts)
                if row is None:
                    continue
                if row["audio"].is_file():
                    rows.append(row)
                else:
                    missing.append(row["audio"].name)
    return _write_corpus_manifest(out, rows, "IEMOCAP", root, missing)


def _iemocap_evaluations(label_file: Path) -> Iterator[tuple[float, float, str, str, list[float]]]:
    with open(label_file, encoding="utf-8", errors="replace") as f:
        for line in f:
            match = IEMOCAP_EVALUATION.match(line)
            if match:
                start, end, utterance, label, vad = match.groups()
                try:
                    scores = [float(v) for v in vad.split(",")]
                except ValueError:
                    scores = []
                yield float(start), float(end), utterance, label, scores


def _iemocap_transcripts(folder: Path) -> dict[str, str]:
    transcripts = {}
    for path in sorted(folder.glob("*.txt")):
        if path.name.startswith("._"):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                match = IEMOCAP_TRANSCRIPT.match(line.strip())
                if match:
                    transcripts[match[1]] = match[2].strip()
    return transcripts


def _iemocap_row(session: Path, evaluation: tuple, label_names: dict, transcripts: dict) -> dict | None:
    start, end, utterance, label, vad = evaluation
    if label not in label_names:
        return None
    dialog, turn = utterance.rsplit("_", 1)
    session_number = int(utterance[3:5])
    gender = turn[0]
    return {
        "audio": session / "sentences" / "wav" / dialog / f"{utterance}.wav",
        "emotion": label_names[label],
        "transcript": transcripts.get(utterance),
        "speaker": f"Ses{session_number:02d}{gender}",
        "split": "test" if session_number == IEMOCAP_TEST_SESSION else "train",
        "corpus": "iemocap",
        "gender": {"F": "female", "M": "male"}.get(gender),
        "iemocap_label": label,
        "start_s": start,
        "end_s": end,
        "valence_activation_dominance": vad or None,
    }


# ---------------------------------------------------------------- Hugging Face datasets


def hf_dataset_manifest(
    dataset_or_name: Any,
    out: str | os.PathLike,
    audio_column: str = "audio",
    label_column: str | None = "emotion",
    text_column: str | None = None,
    speaker_column: str | None = None,
    split_column: str | None = None,
    label_map: dict | None = None,
    allow_hub: bool = False,
) -> Path:
    """Write a `datasets` audio dataset as DIR/clips/*.wav plus the manifest `out` (in DIR).

    dataset_or_name: a Dataset or DatasetDict, a folder saved with save_to_disk, or (with
    allow_hub=True) a Hub name. Integer labels of a ClassLabel column become its names;
    label_map then renames labels (a label mapped to None drops the row; labels not in
    the map are kept). Rows of a DatasetDict get their split name unless split_column.
    """
    import datasets

    out = Path(os.path.abspath(os.fspath(out)))
    parts = _dataset_splits(_load_dataset(dataset_or_name, allow_hub))
    clips = out.parent / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rows = []
    for split_name, dataset in parts:
        columns = _HFColumns(dataset, audio_column, label_column, text_column, speaker_column, split_column)
        if isinstance(dataset.features[audio_column], datasets.Audio):
            # Decode ourselves with soundfile: datasets' own decoding needs torchcodec.
            dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
        for index, example in enumerate(dataset):
            row = columns.row(example, label_map, default_split=split_name)
            if row is None:
                continue
            name = f"{split_name}_{index:06d}.wav" if split_name else f"{index:06d}.wav"
            row["audio"] = _write_clip(clips / name, example[audio_column], index)
            rows.append(row)
    if not rows:
        raise ManifestError(f"{_dataset_name(dataset_or_name)}: the dataset has no rows to write")
    return write_manifest(out, rows)


def _load_dataset(dataset_or_name: Any, allow_hub: bool) -> Any:
    import datasets

    if isinstance(dataset_or_name, (datasets.Dataset, datasets.DatasetDict)):
        return dataset_or_name
    if not isinstance(dataset_or_name, (str, os.PathLike)):
        raise ManifestError(f"expected a datasets.Dataset, a saved dataset folder or a Hub name, not {type(dataset_or_name).__name__}")
    name = os.fspath(dataset_or_name)
    if os.path.isdir(name):
        try:
            return datasets.load_from_disk(name)
        except Exception as error:  # datasets raises several kinds for a bad folder
            raise ManifestError(f"{name}: not a dataset saved with save_to_disk ({_first_line(error)})") from None
    if not allow_hub:
        raise ManifestError(f"{name}: no such dataset folder (pass allow_hub=True to load it from the Hugging Face Hub)")
    try:
        return datasets.load_dataset(name)
    except Exception as error:  # offline, unknown name, gated: all end here
        raise ManifestError(f"{name}: could not load from the Hugging Face Hub ({_first_line(error)})") from None


def _dataset_splits(dataset: Any) -> list[tuple[str | None, Any]]:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        return list(dataset.items())
    if isinstance(dataset, datasets.Dataset):
        return [(None, dataset)]
    raise ManifestError(f"expected a Dataset or DatasetDict, got {type(dataset).__name__} (streaming datasets are not supported)")


class _HFColumns:
    """Maps one dataset's columns onto manifest fields."""

    def __init__(self, dataset: Any, audio: str, label: str | None, text: str | None, speaker: str | None, split: str | None):
        missing = [c for c in (audio, label, text, speaker, split) if c is not None and c not in dataset.column_names]
        if missing:
            raise ManifestError(
                f"dataset has no column {', '.join(map(repr, missing))} (columns: {', '.join(dataset.column_names)})"
            )
        self.label, self.text, self.speaker, self.split = label, text, speaker, split
        feature = dataset.features[label] if label else None
        self.class_names = getattr(feature, "names", None)  # a ClassLabel's names

    def row(self, example: dict, label_map: dict | None, default_split: str | None) -> dict | None:
        emotion = self._label(example[self.label]) if self.label else None
        if label_map is not None and emotion in label_map:
            emotion = label_map[emotion]
            if emotion is None:
                return None
        return {
            "emotion": emotion,
            "transcript": _text_or_none(example, self.text),
            "speaker": _text_or_none(example, self.speaker),
            "split": _text_or_none(example, self.split) if self.split else default_split,
        }

    def _label(self, value: Any) -> str | None:
        if value is None:
            return None
        if self.class_names is not None and isinstance(value, int):
            return self.class_names[value] if 0 <= value < len(self.class_names) else None
        return str(value)


def _text_or_none(example: dict, column: str | None) -> str | None:
    if column is None or example[column] is None:
        return None
    return str(example[column])


def _write_clip(path: Path, audio: Any, index: int) -> Path:
    """Write one example's audio (an array dict, encoded bytes or a file path) as a wav."""
    import soundfile as sf

    samples, rate = _clip_samples(audio, index)
    if samples.ndim == 2 and samples.shape[0] < samples.shape[1]:
        samples = samples.T  # datasets stores (channels, samples); soundfile wants (samples, channels)
    return atomic_write(path, lambda tmp: sf.write(tmp, samples, rate, format="WAV", subtype="PCM_16"))


def _clip_samples(audio: Any, index: int) -> tuple[Any, int]:
    import numpy as np
    import soundfile as sf

    if not isinstance(audio, dict):
        raise ManifestError(f"row {index}: audio is a {type(audio).__name__}, expected a dict")
    try:
        if audio.get("array") is not None:
            return np.asarray(audio["array"], dtype=np.float32), int(audio["sampling_rate"])
        if audio.get("bytes"):
            return sf.read(io.BytesIO(audio["bytes"]), dtype="float32")
        if audio.get("path"):
            return sf.read(audio["path"], dtype="float32")
    except (sf.LibsndfileError, OSError, KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"row {index}: unreadable audio ({_first_line(error)})") from None
    raise ManifestError(f"row {index}: no audio (expected array and sampling_rate, bytes or path)")


def _dataset_name(dataset_or_name: Any) -> str:
    return os.fspath(dataset_or_name) if isinstance(dataset_or_name, (str, os.PathLike)) else "dataset"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
