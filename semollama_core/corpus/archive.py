"""Uploaded zip archives of audio, opened safely.

`safe_extract_zip` refuses entries that would land outside the destination (zip slip:
"../x", absolute paths, symlinks), archives that inflate beyond a size limit (zip
bombs, checked on the declared sizes and again on the bytes actually written) and
archives with too many entries, and extracts into a temporary folder that is renamed
into place only when everything succeeded. `load_uploaded_manifest` pairs an uploaded
manifest with an uploaded zip of its audio, as the app's evaluation tab needs.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .manifest import JSONL_SUFFIXES, CSV_SUFFIXES, ManifestError, iter_manifest

__all__ = ["ArchiveError", "safe_extract_zip", "load_uploaded_manifest"]

MAX_TOTAL_BYTES = 2 * 1024**3  # uncompressed size an upload may reach
MAX_FILES = 50_000  # entries an upload may hold
CHUNK_BYTES = 1024 * 1024
IGNORED_PREFIXES = ("__MACOSX/",)  # resource forks that macOS zips carry along
MANIFEST_SUFFIXES = JSONL_SUFFIXES + CSV_SUFFIXES


class ArchiveError(ValueError):
    """An archive that cannot be extracted safely; the message names the archive."""


def safe_extract_zip(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_files: int = MAX_FILES,
) -> Path:
    """Extract zip_path into dest (which must not exist, or be an empty folder); return dest."""
    zip_path, dest = Path(zip_path), Path(os.path.abspath(os.fspath(dest)))
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ArchiveError(f"{zip_path}: destination {dest} already exists and is not an empty folder")
    try:
        archive = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise ArchiveError(f"{zip_path}: archive not found") from None
    except (zipfile.BadZipFile, OSError) as error:
        raise ArchiveError(f"{zip_path}: not a readable zip archive ({error})") from None
    with archive:
        entries = _checked_entries(zip_path, archive, max_total_bytes, max_files)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.extracting-"))
        try:
            _extract_entries(zip_path, archive, entries, staging, max_total_bytes)
            if dest.exists():
                dest.rmdir()  # empty, checked above; a rename cannot replace it otherwise
            os.rename(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return dest


def _checked_entries(zip_path: Path, archive: zipfile.ZipFile, max_total_bytes: int, max_files: int) -> list:
    """(entry, safe relative name) for every entry, refusing the archive if any is unsafe."""
    infos = archive.infolist()
    if len(infos) > max_files:
        raise ArchiveError(f"{zip_path}: {len(infos)} entries, more than the limit of {max_files}")
    declared = sum(info.file_size for info in infos)
    if declared > max_total_bytes:
        raise ArchiveError(f"{zip_path}: would inflate to {declared} bytes, more than the limit of {max_total_bytes}")
    entries, names = [], set()
    for info in infos:
        name = _safe_entry_name(zip_path, info)
        if name is None:
            continue
        if name in names:
            raise ArchiveError(f"{zip_path}: entry {info.filename!r} appears twice")
        names.add(name)
        entries.append((info, name))
    return entries


_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def _safe_entry_name(zip_path: Path, info: zipfile.ZipInfo) -> str | None:
    """The entry's normalised relative name; None for entries to leave out; ArchiveError if unsafe."""
    raw = info.filename
    name = raw.replace("\\", "/")
    if name.startswith("/") or _WINDOWS_DRIVE.match(name):
        raise ArchiveError(f"{zip_path}: entry {raw!r} has an absolute path; refused")
    if ".." in name.split("/"):
        raise ArchiveError(f"{zip_path}: entry {raw!r} leads outside the archive folder (zip slip); refused")
    if "\x00" in name:
        raise ArchiveError(f"{zip_path}: entry {raw!r} has a NUL byte in its name; refused")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"{zip_path}: entry {raw!r} is a symbolic link; refused")
    # Only the type bits count: zipfile.writestr and other tools store bare permissions (0o600).
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveError(f"{zip_path}: entry {raw!r} is not a plain file or folder; refused")
    normal = posixpath.normpath(name)
    if normal in (".", "") or name.startswith(IGNORED_PREFIXES) or posixpath.basename(normal) == ".DS_Store":
        return None
    return normal


def _extract_entries(zip_path: Path, archive: zipfile.ZipFile, entries: list, staging: Path, max_total_bytes: int) -> None:
    """Write the entries, counting real bytes: declared sizes in a zip can lie."""
    written = 0
    for info, name in entries:
        target = staging / name
        try:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)  # fails where a file has the folder's name
            with archive.open(info) as source, open(target, "xb") as sink:
                while chunk := source.read(CHUNK_BYTES):
                    written += len(chunk)
                    if written > max_total_bytes:
                        raise ArchiveError(f"{zip_path}: inflates past the limit of {max_total_bytes} bytes (zip bomb?)")
                    sink.write(chunk)
        except ArchiveError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as error:
            raise ArchiveError(f"{zip_path}: entry {info.filename!r} cannot be extracted ({_one_line(error)})") from None


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------- uploads


def load_uploaded_manifest(
    manifest_file: Any,
    zip_file: Any,
    workdir: str | os.PathLike,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_files: int = MAX_FILES,
) -> Path:
    """Extract an uploaded zip of audio and place the uploaded manifest beside its audio.

    manifest_file, zip_file: paths (or upload objects with .name, as Gradio gives).
    manifest_file may be None when the zip holds exactly one manifest. The manifest's
    audio paths may match the zip's top level or one folder inside it ("corpus/clips/a.wav"
    for "clips/a.wav"). Returns the path of the manifest to read, inside a fresh folder
    under workdir; every row is checked (its audio must exist) before it is returned.
    """
    zip_path = _upload_path(zip_file, "zip archive")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    upload = Path(tempfile.mkdtemp(dir=workdir, prefix="upload-"))
    extracted = safe_extract_zip(zip_path, upload / "files", max_total_bytes=max_total_bytes, max_files=max_files)
    if manifest_file is None:
        manifest = _manifest_inside(zip_path, extracted)
    else:
        manifest = _place_manifest(_upload_path(manifest_file, "manifest"), extracted)
    for _ in iter_manifest(manifest):  # every audio path must exist before the app uses it
        pass
    return manifest


def _upload_path(upload: Any, what: str) -> Path:
    if upload is None:
        raise ArchiveError(f"no {what} uploaded")
    name = upload if isinstance(upload, (str, os.PathLike)) else getattr(upload, "name", None)
    if name is None:
        raise ArchiveError(f"the uploaded {what} is a {type(upload).__name__}, not a file path")
    path = Path(name)
    if not path.is_file():
        raise ArchiveError(f"{path}: uploaded {what} not found")
    return path


def _manifest_inside(zip_path: Path, extracted: Path) -> Path:
    found = sorted(p for p in extracted.rglob("*") if p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file())
    if len(found) != 1:
        names = ", ".join(str(p.relative_to(extracted)) for p in found[:5]) or "none"
        raise ArchiveError(f"{zip_path}: expected one manifest (.jsonl/.csv) in the archive, found {len(found)}: {names}")
    return found[0]


def _place_manifest(manifest: Path, extracted: Path) -> Path:
    """Copy the manifest into the folder of the extracted tree its audio paths start from."""
    first = next(iter_manifest(manifest, check_files=False))
    relative = first.audio_path.relative_to(manifest.resolve().parent)
    base = _base_folder(extracted, relative)
    if base is None:
        raise ManifestError(f"{manifest}: its first audio file {relative.as_posix()} is not in the uploaded archive")
    placed = base / f"manifest{manifest.suffix.lower() or '.jsonl'}"
    if placed.exists():
        placed = Path(tempfile.mkstemp(dir=base, prefix="manifest-", suffix=placed.suffix)[1])
    shutil.copyfile(manifest, placed)
    return placed


def _base_folder(extracted: Path, relative: Path) -> Path | None:
    """The folder under `extracted` (itself or one level down) that holds `relative`."""
    if (extracted / relative).is_file():
        return extracted
    for folder in sorted(p for p in extracted.iterdir() if p.is_dir()):
        if (folder / relative).is_file():
            return folder
    return None
