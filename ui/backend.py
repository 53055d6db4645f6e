"""What the app's tabs share: settings, the one read-only system, the ratings store, the
bundled examples, and a scratch folder for downloads. No gradio here: handlers in the
tab modules are plain functions over a `Backend`; only their wrappers touch gradio.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from semollama_core import REPO_ROOT, Utterance, atomic_write, read_manifest

EXAMPLES_MANIFEST = "examples.jsonl"
# Rating clips are served from copies named by their content's hash: a URL or file name
# an annotator can see names no example, emotion or system.
BLIND_AUDIO_DIR = Path(tempfile.gettempdir()) / "semollama-rating-audio"
# Gold items of the examples' rating set: attention checks with known answers.
GOLD_COPY = "attention_copy"              # the same reply twice: the answer is tie
GOLD_DISTRACTOR = "attention_distractor"  # a reply to something else: the other one, or both bad
DISTRACTOR_REPLY = ("Please remember to water the plants on Tuesday; the spare key is under the blue pot. "
                    "The train to the coast leaves at half past six.")
SCRATCH_MAX_AGE_S = 3600  # downloads are copied into gradio's cache; ours can go after an hour
# Markdown syntax characters; <, > and & are left to html.escape (a backslash before "&"
# would stop the entity from being read, and "#" must stay out of entities: quote=False).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in _TRUE + _FALSE:
        raise ValueError(f"{name} must be one of {', '.join(_TRUE + _FALSE)}, not {os.environ[name]!r}")
    return value in _TRUE


def _env_int(name: str, default: int, minimum: int = 1, maximum: int = 1_000_000) -> int:
    value = os.environ.get(name, "").strip()
    try:
        number = int(value) if value else default
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None
    if not minimum <= number <= maximum:
        raise ValueError(f"{name} must be between {minimum} and {maximum}, not {number}")
    return number


@dataclass(frozen=True)
class AppSettings:
    # Folder with examples.jsonl and its clips; a missing folder just means no examples.
    examples_dir: str = str(REPO_ROOT / "assets" / "examples")
    # Ratings database URL; None lets RatingStore use SEMOLLAMA_RATINGS_URL or SQLite in the data dir.
    ratings_url: str | None = None
    # Guards the ratings export and results; None leaves them open (RatingStore reads the env).
    admin_password: str | None = None
    # Show the transcript to annotators (off: they judge from the audio alone).
    show_transcript: bool = False
    # Rating set the Rate tab serves; None builds one from the bundled examples.
    rating_set: str | None = None
    # Hugging Face dataset repo that ratings can be pushed to (needs HF_TOKEN in the env).
    hf_dataset: str | None = None
    # Upload limit for every file (audio, manifests, zips), in MB.
    max_upload_mb: int = 100
    # Waiting requests before the queue refuses more (protects the CPU).
    queue_size: int = 64  # Talk and Rate share it: 20 talkers + 50 annotators must fit

    @classmethod
    def from_env(cls) -> "AppSettings":
        return cls(
            examples_dir=os.environ.get("SEMOLLAMA_EXAMPLES_DIR") or cls.examples_dir,
            ratings_url=os.environ.get("SEMOLLAMA_RATINGS_URL") or None,
            admin_password=os.environ.get("SEMOLLAMA_ADMIN_PASSWORD") or None,
            show_transcript=_env_flag("SEMOLLAMA_SHOW_TRANSCRIPT"),
            rating_set=os.environ.get("SEMOLLAMA_RATING_SET") or None,
            hf_dataset=os.environ.get("SEMOLLAMA_HF_DATASET") or None,
            max_upload_mb=_env_int("SEMOLLAMA_MAX_UPLOAD_MB", cls.max_upload_mb, maximum=10_000),
            queue_size=_env_int("SEMOLLAMA_QUEUE_SIZE", cls.queue_size, maximum=10_000),
        )


@dataclass(frozen=True)
class Example:
    name: str          # file name inside the examples folder
    path: Path
    emotion: str | None
    transcript: str | None
    kind: str | None = None  # "real" (a person) or "synthetic" (a speech synthesiser), from examples.jsonl

    @property
    def label(self) -> str:
        kind = f"{self.kind} voice, " if self.kind else ""
        return f"{self.emotion or 'unlabelled'}: {self.transcript or ''} ({kind}{self.name})"


def markdown_text(text: Any) -> str:
    """Text made inert for gr.Markdown: HTML escaped, then Markdown syntax escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class ModelSlot:
    """The one model slot of the process (two CPU cores run one model call at a time well).

    Interactive turns (Talk, Inspect) hold it for a whole turn; batch work (an evaluation,
    building the rating set) holds it one short chunk at a time and, between chunks, lets
    every interactive turn that is waiting go first. So a long evaluation delays a Talk turn
    by at most one chunk. Not tied to a thread: gradio may run a streaming handler's steps
    on different worker threads."""

    def __init__(self):
        self._changed = threading.Condition()
        self._busy = False
        self._interactive_waiting = 0

    @contextmanager
    def interactive(self):
        with self._changed:
            self._interactive_waiting += 1
            try:
                while self._busy:
                    self._changed.wait()
            finally:
                self._interactive_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def batch(self):
        with self._changed:
            while self._busy or self._interactive_waiting:
                self._changed.wait()
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @property
    def interactive_waiting(self) -> int:
        return self._interactive_waiting

    def _release(self) -> None:
        with self._changed:
            self._busy = False
            self._changed.notify_all()


class Backend:
    """Loads the system once (lazily, thread-safe) and hands out shared read-only things."""

    def __init__(self, system_factory: Callable[[], Any], settings: AppSettings | None = None):
        self.settings = settings or AppSettings.from_env()
        self._system_factory = system_factory
        self._system = None
        self._store = None
        self._lock = threading.Lock()
        self._rating_lock = threading.Lock()
        self._rating_set_name: str | None = self.settings.rating_set
        self.slot = ModelSlot()
        self.scratch = Path(tempfile.mkdtemp(prefix="semollama-app-"))

    # ----- shared models and stores -----------------------------------------------------
    @property
    def system(self):
        if self._system is None:
            with self._lock:
                if self._system is None:
                    self._system = self._system_factory()
        return self._system

    @property
    def system_loaded(self) -> bool:
        return self._system is not None

    @property
    def exports_guarded(self) -> bool:
        """Whether an admin password guards the ratings (the store reads the env too)."""
        return self.settings.admin_password is not None or bool(os.environ.get("SEMOLLAMA_ADMIN_PASSWORD"))

    @property
    def store(self):
        if self._store is None:
            from .ratings import RatingStore

            with self._lock:
                if self._store is None:
                    self._store = RatingStore(self.settings.ratings_url,
                                              admin_password=self.settings.admin_password)
        return self._store

    # ----- examples ---------------------------------------------------------------------
    @property
    def examples_dir(self) -> Path:
        return Path(self.settings.examples_dir)

    def examples(self) -> list[Example]:
        """The bundled examples; an absent folder or listing gives none, a broken one raises."""
        manifest = self.examples_dir / EXAMPLES_MANIFEST
        if not manifest.is_file():
            return []
        return [self._example(u) for u in read_manifest(manifest)]

    def _example(self, utterance: Utterance) -> Example:
        name = utterance.audio_path.relative_to(self.examples_dir.resolve()).as_posix() \
            if utterance.audio_path.is_relative_to(self.examples_dir.resolve()) else utterance.audio_path.name
        return Example(name, utterance.audio_path, utterance.emotion, utterance.transcript,
                       utterance.extra.get("kind"))

    def example_path(self, name: str) -> Path:
        """The file of one example by name; refuses anything not listed (no path tricks)."""
        for example in self.examples():
            if example.name == name:
                return example.path
        raise ValueError(f"No bundled example named {name!r}.")

    # ----- the rating set ---------------------------------------------------------------
    def rating_set(self, progress: Callable[[int, int], None] | None = None) -> str:
        """Name of the rating set to serve; built once from the examples if none is set."""
        if self._rating_set_name is not None:
            return self._rating_set_name
        with self._rating_lock:
            if self._rating_set_name is None:
                self._rating_set_name = self._build_example_rating_set(progress)
        return self._rating_set_name

    def _build_example_rating_set(self, progress) -> str:
        examples = self.examples()
        if not examples:
            raise ValueError("No rating set: the bundled examples are missing "
                             f"({self.examples_dir / EXAMPLES_MANIFEST}); set SEMOLLAMA_RATING_SET.")
        name = self._example_set_name(examples)
        if name in self.store.rating_sets():
            return name
        items = []
        for done, example in enumerate(examples):
            if progress:
                progress(done, len(examples))
            with self.slot.batch():  # background work: a Talk turn goes first
                result = self.system.respond(str(example.path))
            items.append({"audio": example.name, "emotion": example.emotion or "",
                          "transcript": example.transcript or result.transcript,
                          "responses": dict(result.responses), "item_id": f"ex-{done}"})
        self.store.add_rating_set(name, items + gold_items(items))
        return name

    def _example_set_name(self, examples: list[Example]) -> str:
        """Named after what made the responses, so a new checkpoint gets a fresh set."""
        described = self.system.describe()
        key = json.dumps([[e.name, e.emotion, e.transcript] for e in examples]
                         + [described.get("llm"), described.get("adapter"), self.system.config.max_new_tokens,
                            "with gold items"],
                         sort_keys=True, default=str)
        return "examples-" + hashlib.sha256(key.encode()).hexdigest()[:12]

    def rating_audio_path(self, audio: str) -> Path | None:
        """The blind copy of a rating item's audio, which must lie inside the examples folder."""
        root = self.examples_dir.resolve()
        path = (root / audio).resolve()
        if path.is_relative_to(root) and path.is_file():
            return blind_copy(path)
        return None

    # ----- scratch files ----------------------------------------------------------------
    def scratch_path(self, stem: str, suffix: str) -> Path:
        """A fresh path for a download; old downloads are pruned on the way."""
        now = time.time()
        for old in self.scratch.iterdir():
            try:
                if now - old.stat().st_mtime > SCRATCH_MAX_AGE_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        folder = self.scratch / uuid.uuid4().hex[:12]
        folder.mkdir()
        return folder / f"{stem}{suffix}"


def gold_items(items: list[dict]) -> list[dict]:
    """Two attention checks made from the first two items: the same reply on both sides
    (accepted: tie), and a real reply against one about something else (accepted: the real
    one, or both bad). Their systems' names are as hidden as any other."""
    if len(items) < 2:
        return []
    (first, first_reply), (second, second_reply) = [(item, next(iter(item["responses"].items()))) for item in items[:2]]
    return [{**first, "item_id": "gold-0", "responses": {first_reply[0]: first_reply[1], GOLD_COPY: first_reply[1]},
             "gold": ["tie"]},
            {**second, "item_id": "gold-1",
             "responses": {second_reply[0]: second_reply[1], GOLD_DISTRACTOR: DISTRACTOR_REPLY},
             "gold": [second_reply[0], "both_bad"]}]


def blind_copy(path: Path) -> Path:
    """The clip re-encoded as plain 16-bit WAV (no metadata chunks) under its content's hash."""
    import soundfile as sf

    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    try:
        data, rate = sf.read(str(path), always_2d=False)
    except (RuntimeError, ValueError, sf.LibsndfileError):  # a format libsndfile cannot read: copy the bytes
        data = rate = None
    target = BLIND_AUDIO_DIR / (f"{digest}.wav" if data is not None else f"{digest}{_audio_suffix(path)}")
    if not target.is_file():
        BLIND_AUDIO_DIR.mkdir(parents=True, exist_ok=True)
        if data is None:
            write_atomic(target, lambda tmp: shutil.copyfile(path, tmp))
        else:
            write_atomic(target, lambda tmp: sf.write(str(tmp), data, rate, format="WAV", subtype="PCM_16"))
    return target


def _audio_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    return suffix if suffix in (".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".webm") else ""


def write_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call write(tmp) then move tmp onto path, so no half-written download is ever served."""
    return atomic_write(path, write, mode=None)
