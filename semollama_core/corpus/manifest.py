"""Manifests: one utterance a line, JSONL or CSV, audio paths relative to the manifest.

    {"audio": "clips/a.wav", "emotion": "sad", "transcript": "...", "speaker": "s1", "split": "test"}

`iter_manifest` streams a manifest row by row (a million-row file is never held in
memory), checks every row and names the file and line of anything wrong.
`write_manifest` writes one atomically. The corpus converters (RAVDESS, CREMA-D, IEMOCAP,
Hugging Face `datasets`) live in `converters.py`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
import warnings
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..files import atomic_write

__all__ = [
    "Utterance",
    "ManifestError",
    "ManifestWarning",
    "iter_manifest",
    "read_manifest",
    "write_manifest",
    "manifest_labels",
]

STANDARD_FIELDS = ("audio", "emotion", "transcript", "speaker", "split")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv", ".tsv")
MAX_WARNINGS = 10  # per-row warnings shown in skip mode before only a summary is given


class ManifestError(ValueError):
    """A manifest (or corpus) that cannot be read; the message names file and line."""


class ManifestWarning(UserWarning):
    """A manifest row skipped (on_error="skip") or a corpus file that was not understood."""


@dataclass(frozen=True, slots=True)
class Utterance:
    audio_path: Path  # absolute path of the audio file
    emotion: str | None = None  # label; required for evaluation
    transcript: str | None = None  # what was said, if known
    speaker: str | None = None  # speaker id, for speaker-disjoint splits
    split: str | None = None  # e.g. "train" / "test"
    extra: dict = field(default_factory=dict, hash=False)  # every other field of the row


class _RowError(Exception):
    """A problem with one row; turned into ManifestError (or a warning) with file:line."""


# ---------------------------------------------------------------- reading


def iter_manifest(
    path: str | os.PathLike,
    *,
    require_emotion: bool = False,
    labels: Iterable[str] | None = None,
    split: str | None = None,
    check_files: bool = True,
    on_error: str = "raise",
) -> Iterator[Utterance]:
    """The manifest's utterances one at a time, reading the file line by line.

    require_emotion: a row without `emotion` is an error.
    labels: a row whose emotion is not one of these is an error.
    split: yield only rows with this `split`.
    check_files: check that every audio file exists and that no symlink leads outside
        the manifest's folder (one stat per row); paths are always checked lexically.
    on_error: "raise" stops at the first bad row; "skip" warns (ManifestWarning) and
        goes on. Duplicate audio paths are bad rows. Problems with the file itself
        (missing, empty, not UTF-8, no `audio` column, ragged CSV) always raise.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if isinstance(labels, str):
        raise ValueError(f"labels must be a collection of labels, not the string {labels!r}")
    manifest = _existing_file(path)
    checker = _RowChecker(
        manifest,
        require_emotion=require_emotion,
        labels=None if labels is None else frozenset(labels),
        check_files=check_files,
    )
    # Checked above, at the call; the rows are read only as they are asked for.
    return _stream_utterances(manifest, checker, split, on_error)


def _stream_utterances(manifest: Path, checker: "_RowChecker", split: str | None, on_error: str) -> Iterator[Utterance]:
    counts = {"rows": 0, "yielded": 0, "skipped": 0}
    splits_seen: set[str] = set()
    for lineno, row in _iter_rows(manifest):
        counts["rows"] += 1
        try:
            if isinstance(row, _RowError):
                raise row
            if split is not None:
                row_split = _optional_text(row, "split")
                if row_split != split:
                    if row_split is not None and len(splits_seen) < 20:
                        splits_seen.add(row_split)
                    continue
            utterance = checker.utterance(row)
        except _RowError as error:
            message = f"{manifest}:{lineno}: {error}"
            if on_error == "raise":
                raise ManifestError(message) from None
            counts["skipped"] += 1
            if counts["skipped"] <= MAX_WARNINGS:
                warnings.warn(f"{message}; row skipped", ManifestWarning, stacklevel=3)
            continue
        counts["yielded"] += 1
        yield utterance
    _check_something_yielded(manifest, counts, split, splits_seen)


def read_manifest(path: str | os.PathLike, *, limit: int | None = None, **options) -> list[Utterance]:
    """The first `limit` utterances (all if None) as a list; options as for iter_manifest."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows, not {limit}")
    utterances = []
    for utterance in iter_manifest(path, **options):
        utterances.append(utterance)
        if limit is not None and len(utterances) >= limit:
            break
    return utterances


def manifest_labels(path: str | os.PathLike) -> list[str]:
    """The sorted set of emotion labels the manifest's rows declare."""
    labels = {u.emotion for u in iter_manifest(path, check_files=False) if u.emotion is not None}
    if not labels:
        raise ManifestError(f"{path}: no row has an 'emotion' label")
    return sorted(labels)


def _existing_file(path: str | os.PathLike) -> Path:
    manifest = Path(os.path.abspath(os.fspath(path)))
    if not manifest.exists():
        raise ManifestError(f"{manifest}: manifest not found")
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: manifest is not a file")
    return manifest


def _check_something_yielded(manifest: Path, counts: dict, split: str | None, splits_seen: set) -> None:
    if counts["skipped"] > MAX_WARNINGS:
        warnings.warn(f"{manifest}: {counts['skipped']} rows skipped in all", ManifestWarning, stacklevel=4)
    if counts["yielded"]:
        return
    if counts["rows"] == 0:
        raise ManifestError(f"{manifest}: manifest is empty (no rows)")
    if counts["skipped"]:
        raise ManifestError(f"{manifest}: all {counts['skipped']} rows were invalid and skipped")
    if split is not None:
        seen = ", ".join(sorted(splits_seen)) or "none"
        raise ManifestError(f"{manifest}: no rows with split {split!r} (splits present: {seen})")


def _iter_rows(manifest: Path) -> Iterator[tuple[int, dict | _RowError]]:
    """(line number, row dict, or the error that stands for an unreadable row), JSONL or CSV."""
    kind = _manifest_kind(manifest)
    if kind == "jsonl":
        return _iter_jsonl_rows(manifest)
    return _iter_csv_rows(manifest, delimiter="\t" if kind == "tsv" else ",")


def _manifest_kind(manifest: Path) -> str:
    suffix = manifest.suffix.lower()
    first = _first_text(manifest)
    if first.startswith("["):
        raise ManifestError(f"{manifest}:1: a JSON array; write one JSON object a line (JSONL)")
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    if suffix == ".csv":
        return "csv"
    # Unknown extension: sniff. JSONL rows start with "{", anything else is read as CSV.
    return "jsonl" if first.startswith("{") else "csv"


def _first_text(manifest: Path) -> str:
    """The first non-blank characters of the file (for sniffing), BOM removed."""
    with open(manifest, "rb") as f:
        head = f.read(4096)
    return head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")


def _decoded_lines(manifest: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line; non-UTF-8 bytes name their line."""
    with open(manifest, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ManifestError(
                    f"{manifest}:{lineno}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
                    f"{error.start + 1}); save the manifest as UTF-8"
                ) from None


_decode_json = json.JSONDecoder().decode


def _iter_jsonl_rows(manifest: Path) -> Iterator[tuple[int, dict | _RowError]]:
    for lineno, text in _decoded_lines(manifest):
        if not text.strip():
            continue
        # A broken line is a row error, not a file error: JSONL lines stand alone, so
        # on_error="skip" can pass over it. The error is handed on in place of the row.
        try:
            row = _decode_json(text)
        except json.JSONDecodeError as error:
            row = _RowError(f"invalid JSON ({error.msg} at column {error.colno})")
        if not isinstance(row, (dict, _RowError)):
            row = _RowError(f"expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def _iter_csv_rows(manifest: Path, delimiter: str) -> Iterator[tuple[int, dict]]:
    lines = _decoded_lines(manifest)
    line_numbers = []  # the physical line each text line came from (blank lines are skipped)

    def texts() -> Iterator[str]:
        for lineno, text in lines:
            line_numbers.append(lineno)
            yield text

    reader = csv.reader(texts(), delimiter=delimiter)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as error:
        raise ManifestError(f"{manifest}:1: unreadable CSV header ({error})") from None
    if "audio" not in header:
        raise ManifestError(f"{manifest}:{line_numbers[0]}: no 'audio' column (columns: {', '.join(header)})")
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ManifestError(f"{manifest}:{line_numbers[-1]}: unreadable CSV ({error})") from None
        lineno = line_numbers[-1]
        line_numbers.clear()  # keep memory flat: only the current record's lines matter
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise ManifestError(f"{manifest}:{lineno}: {len(values)} fields, but the header has {len(header)}")
        yield lineno, {name: value for name, value in zip(header, values) if value != ""}


class _RowChecker:
    """Turns row dicts into Utterances, checking paths, labels and duplicates."""

    def __init__(self, manifest: Path, *, require_emotion: bool, labels: frozenset | None, check_files: bool):
        self.root = os.path.realpath(manifest.parent)
        self.root_prefix = self.root.rstrip(os.sep) + os.sep
        self.require_emotion = require_emotion
        self.labels = labels
        self.check_files = check_files
        self.seen_paths = _HashSet()

    def utterance(self, row: dict) -> Utterance:
        if "audio" not in row:
            raise _RowError("missing 'audio'")
        relative = _relative_audio_path(row["audio"])
        emotion = _optional_text(row, "emotion")
        if emotion is None and self.require_emotion:
            raise _RowError(f"missing 'emotion' for {relative}")
        if emotion is not None and self.labels is not None and emotion not in self.labels:
            raise _RowError(f"label {emotion!r} is not one of {sorted(self.labels)}")
        audio_path = self.root_prefix + relative
        if self.check_files:
            self._check_file(relative, audio_path)
        if not self.seen_paths.add(relative):
            raise _RowError(f"duplicate audio path {relative}")
        return Utterance(
            audio_path=Path(audio_path),
            emotion=emotion,
            transcript=_optional_text(row, "transcript"),
            speaker=_optional_text(row, "speaker", allow_number=True),
            split=_optional_text(row, "split"),
            extra={k: v for k, v in row.items() if k not in STANDARD_FIELDS},
        )

    def _check_file(self, relative: str, audio_path: str) -> None:
        real = os.path.realpath(audio_path)
        if not real.startswith(self.root_prefix):
            raise _RowError(f"audio {relative} is a link that leads outside the manifest's folder; refused")
        if not os.path.isfile(real):
            raise _RowError(f"audio file not found: {relative}")


_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def _relative_audio_path(value: Any) -> str:
    """The normalised relative path, or _RowError if it is absolute or leaves the folder."""
    if not isinstance(value, str) or not value.strip():
        raise _RowError(f"'audio' must be a non-empty relative path, not {value!r}")
    # Manifests written on Windows use backslashes.
    path = value.strip().replace("\\", "/")
    if path.startswith("/") or (path[1:2] == ":" and _WINDOWS_DRIVE.match(path)):
        raise _RowError(f"absolute audio path {value!r} refused; paths are relative to the manifest's folder")
    # normpath only when needed: this runs once a row, and most paths are already plain.
    needs_normalising = path.startswith(".") or "/." in path or "//" in path or path.endswith("/")
    normal = posixpath.normpath(path) if needs_normalising else path
    if normal == ".." or normal.startswith("../"):
        raise _RowError(f"audio path {value!r} leaves the manifest's folder; refused")
    if normal == ".":
        raise _RowError(f"audio path {value!r} names the manifest's folder, not a file")
    return normal


def _optional_text(row: dict, key: str, allow_number: bool = False) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if value.__class__ is str:  # the common case first: this runs for every field of every row
        value = value.strip()
        return value or None
    if allow_number and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _RowError(f"'{key}' must be a string, not {value!r}")
    value = value.strip()
    return value or None


class _HashSet:
    """A set of 64-bit string hashes in one flat array (open addressing).

    Duplicate detection must remember every path; a Python set of a million paths costs
    ~100 MB, this costs 16 bytes a row. Two different paths share a 64-bit hash with
    odds of about n^2 / 2^65 (3e-8 for a million rows).
    """

    def __init__(self) -> None:
        self.slots = array("q", [0]) * 4096
        self.count = 0

    def add(self, key: str) -> bool:
        """Add key; False if it was already there."""
        h = hash(key) or 1  # 0 marks an empty slot
        if not self._insert(self.slots, h):
            return False
        self.count += 1
        if 2 * self.count > len(self.slots):
            self._grow()
        return True

    @staticmethod
    def _insert(slots: array, h: int) -> bool:
        mask = len(slots) - 1
        i = h & mask
        while slots[i]:
            if slots[i] == h:
                return False
            i = (i + 1) & mask
        slots[i] = h
        return True

    def _grow(self) -> None:
        bigger = array("q", [0]) * (2 * len(self.slots))  # no temporary bytes object
        for h in self.slots:
            if h:
                self._insert(bigger, h)
        self.slots = bigger


# ---------------------------------------------------------------- writing


def write_manifest(path: str | os.PathLike, rows: Iterable[Utterance | dict]) -> Path:
    """Write Utterances or row dicts as JSONL, or CSV for a .csv/.tsv path, atomically.

    Audio paths are written relative to the manifest's folder; every audio file must
    lie inside that folder. Dicts name the file under `audio` (absolute, or already
    relative to the manifest's folder) or `audio_path`.
    """
    manifest = Path(os.path.abspath(os.fspath(path)))
    manifest.parent.mkdir(parents=True, exist_ok=True)
    root = str(manifest.parent)
    row_dicts = (_row_dict(item, root, manifest) for item in rows)
    suffix = manifest.suffix.lower()
    if suffix in CSV_SUFFIXES:
        delimiter = "\t" if suffix == ".tsv" else ","
        row_list = list(row_dicts)  # the header needs every row's columns
        _require_rows(manifest, len(row_list))
        _atomic_write(manifest, lambda f: _write_csv(f, row_list, delimiter))
    else:
        _atomic_write(manifest, lambda f: _require_rows(manifest, _write_jsonl(f, row_dicts)))
    return manifest


def _require_rows(manifest: Path, count: int) -> None:
    if count == 0:
        raise ManifestError(f"{manifest}: no rows to write")


def _row_dict(item: Utterance | dict, root: str, manifest: Path) -> dict:
    if isinstance(item, Utterance):
        row = {
            "audio": item.audio_path,
            "emotion": item.emotion,
            "transcript": item.transcript,
            "speaker": item.speaker,
            "split": item.split,
            **item.extra,
        }
    elif isinstance(item, dict):
        row = dict(item)
        if "audio" not in row and "audio_path" in row:
            row["audio"] = row.pop("audio_path")
        if "audio" not in row:
            raise ManifestError(f"{manifest}: a row to write has no 'audio': {_short(item)}")
    else:
        raise ManifestError(f"{manifest}: rows must be Utterances or dicts, not {type(item).__name__}")
    row["audio"] = _audio_relative_to(row["audio"], root, manifest)
    return {k: v for k, v in row.items() if v is not None}


def _audio_relative_to(audio: str | os.PathLike, root: str, manifest: Path) -> str:
    audio = os.fspath(audio)
    if os.path.isabs(audio):
        relative = os.path.relpath(audio, root)
        if relative.startswith(".."):  # perhaps only through a symlinked folder
            relative = os.path.relpath(os.path.realpath(audio), os.path.realpath(root))
    else:
        relative = audio
    try:
        return _relative_audio_path(relative.replace(os.sep, "/"))
    except _RowError:
        raise ManifestError(
            f"{manifest}: audio {audio} is outside the manifest's folder {root}; "
            "write the manifest in a folder that contains the audio"
        ) from None


def _write_jsonl(f: io.TextIOBase, rows: Iterable[dict]) -> int:
    count = 0
    for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def _write_csv(f: io.TextIOBase, rows: list[dict], delimiter: str) -> None:
    columns = list(STANDARD_FIELDS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _atomic_write(path: Path, write: Callable[[io.TextIOBase], Any]) -> None:
    """write(f) on a text file that replaces `path` whole, or not at all."""
    def to_file(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, to_file)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
