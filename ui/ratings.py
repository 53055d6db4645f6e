"""Annotators' ratings: blind pairwise comparisons of two systems' responses.

A rating set is a fixed list of items (audio, emotion, transcript and one stored
response per system), so every annotator rates the same texts. Each item compares
one pair of systems, chosen when the set is added so that pairs are balanced across
the set's items; every annotator sees the same pair on an item (so agreement can be
measured), and the A/B order is drawn at random for each annotator and item, balanced
so that an item's annotators see both orders (position bias cancels); the placement is
logged with every rating (`system_a`, `system_b`, `swapped`). Which system is A and
which is B lives only in the `assignments` table, keyed by an opaque token: an
`Assignment` never names a system, and only the stored `Rating` does.

Careful rating (the conventions of Chatbot Arena, Argilla and Label Studio): four
choices (A, B, tie, both bad); gold items whose accepted answers are known check
attention and stay out of the preference statistics; an annotator may skip an item
(it comes back once every other item is done); the time from showing an item to its
vote is recorded (`time_spent_s`, server clock, from the last time it was shown).

Storage is SQLAlchemy Core: SQLite by default (WAL, busy timeout, foreign keys on,
`BEGIN IMMEDIATE` so concurrent writers queue instead of failing), any SQLAlchemy URL
by setting. Every constraint that matters is also in the schema.

    store = RatingStore()                       # or RatingStore("postgresql://...")
    store.add_rating_set("pilot", items)        # idempotent
    a = store.next_assignment("ann1", "pilot")  # None when everything is rated
    r = store.submit_rating(a.token, "ann1", "A", empathy_a=4, empathy_b=2,
                            quality_a=4, quality_b=3, idempotency_key=key)
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import hmac
import io
import itertools
import json
import os
import random
import re
import secrets
import socket
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

from sqlalchemy import (CheckConstraint, Column, DateTime, Float, ForeignKey, ForeignKeyConstraint, Integer,
    MetaData, String, Table, Text, UniqueConstraint, create_engine, event, func, inspect, select, update)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

__all__ = [
    "Assignment", "Progress", "Rating", "RatingAccessError", "RatingError", "RatingSetInfo",
    "RatingStore", "HubError", "RATING_EXPORT_FIELDS", "CHOICES", "OUTCOMES", "clean_text",
]

CHOICES = ("A", "B", "tie", "both_bad")
# A gold item's accepted answers name systems or these system-level outcomes.
OUTCOMES = ("tie", "both_bad")
SCHEMA_VERSION = 2
SCORE_RANGE = (1, 5)               # empathy and quality, for response A and response B
MAX_COMMENT_CHARS = 2000
MAX_TRANSCRIPT_CHARS = 10_000
MAX_RESPONSE_CHARS = 20_000
MAX_AUDIO_PATH_CHARS = 1024
MAX_EMOTION_CHARS = 64
MAX_ITEMS_PER_SET = 100_000
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")        # annotators
SET_OR_SYSTEM_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # rating sets, systems
KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")          # idempotency keys, item ids
REPO_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,96}/[A-Za-z0-9_.-]{1,96}")
DEFAULT_DATA_DIR = "~/.local/share/semollama"
SQLITE_BUSY_TIMEOUT_S = 30
# C0/C1 controls except tab and newline, bidi overrides/isolates (they can make a
# comment display as something else), BOM, and lone surrogates (not encodable as UTF-8).
_UNSAFE_CHARS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")
# Leading characters a spreadsheet would run as a formula when it opens the CSV.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class RatingError(ValueError):
    """Bad input to the ratings store; the message is one line and says what to fix."""


class RatingAccessError(RatingError, PermissionError):
    """The caller may not do this: another annotator's assignment, or a wrong admin password."""


class HubError(RatingError):
    """Pushing the ratings to the Hugging Face Hub failed (offline, no token, refused)."""


# ----------------------------------------------------------------------------- schema

metadata = MetaData()

rating_sets_table = Table(
    "rating_sets", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("fingerprint", String(64), nullable=False),  # sha256 of the items, for idempotency
    Column("created_at", DateTime(timezone=True), nullable=False),
)

items_table = Table(
    "items", metadata,
    Column("id", Integer, primary_key=True),
    Column("rating_set_id", ForeignKey("rating_sets.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("item_key", String(128), nullable=False),
    Column("audio", String(MAX_AUDIO_PATH_CHARS), nullable=False),
    Column("emotion", String(MAX_EMOTION_CHARS), nullable=False),
    Column("transcript", Text, nullable=False),
    # The pair compared on this item (system_1 < system_2); never shown before a vote.
    Column("system_1", String(64), nullable=False),
    Column("system_2", String(64), nullable=False),
    # Gold items: the accepted system-level answers, comma-separated (system names, tie, both_bad).
    Column("gold", String(512), nullable=True),
    UniqueConstraint("rating_set_id", "item_key"),
    UniqueConstraint("rating_set_id", "position"),
    CheckConstraint("system_1 < system_2", name="item_pair_sorted"),
    CheckConstraint(func.char_length(Column("transcript")) <= MAX_TRANSCRIPT_CHARS,
                    name="transcript_length"),
)

responses_table = Table(
    "responses", metadata,
    Column("item_id", ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    Column("system", String(64), primary_key=True),
    Column("text", Text, nullable=False),
    CheckConstraint(func.char_length(Column("text")) <= MAX_RESPONSE_CHARS, name="response_length"),
)

assignments_table = Table(
    "assignments", metadata,
    Column("token", String(64), primary_key=True),
    Column("annotator_id", String(64), nullable=False),
    Column("item_id", ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    Column("system_a", String(64), nullable=False),
    Column("system_b", String(64), nullable=False),
    Column("shown_at", DateTime(timezone=True), nullable=False),      # first shown
    Column("displayed_at", DateTime(timezone=True), nullable=False),  # last shown (time spent counts from it)
    Column("skipped_at", DateTime(timezone=True), nullable=True),     # skipped and not yet shown again
    UniqueConstraint("annotator_id", "item_id"),
    CheckConstraint("system_a <> system_b", name="assignment_two_systems"),
    # Both shown systems must have a stored response for the item.
    ForeignKeyConstraint(["item_id", "system_a"], ["responses.item_id", "responses.system"]),
    ForeignKeyConstraint(["item_id", "system_b"], ["responses.item_id", "responses.system"]),
)

_SCORE_COLUMNS = ("empathy_a", "empathy_b", "quality_a", "quality_b")

schema_table = Table(
    "schema_info", metadata,
    Column("version", Integer, primary_key=True),
)

ratings_table = Table(
    "ratings", metadata,
    Column("id", Integer, primary_key=True),
    Column("token", ForeignKey("assignments.token"), nullable=False, unique=True),
    Column("annotator_id", String(64), nullable=False),
    Column("item_id", ForeignKey("items.id"), nullable=False),
    Column("system_a", String(64), nullable=False),
    Column("system_b", String(64), nullable=False),
    Column("choice", String(8), nullable=False),
    *[Column(name, Integer, nullable=False) for name in _SCORE_COLUMNS],
    Column("comment", Text, nullable=False),
    Column("idempotency_key", String(128), nullable=False, unique=True),
    Column("shown_at", DateTime(timezone=True), nullable=False),
    Column("submitted_at", DateTime(timezone=True), nullable=False),
    Column("time_spent_s", Float, nullable=False),
    UniqueConstraint("annotator_id", "item_id"),  # one rating per annotator and item
    CheckConstraint("choice IN ('A', 'B', 'tie', 'both_bad')", name="rating_choice"),
    CheckConstraint("time_spent_s >= 0", name="rating_time_spent"),
    CheckConstraint("system_a <> system_b", name="rating_two_systems"),
    *[CheckConstraint(f"{name} BETWEEN {SCORE_RANGE[0]} AND {SCORE_RANGE[1]}", name=f"rating_{name}")
      for name in _SCORE_COLUMNS],
    CheckConstraint(func.char_length(Column("comment")) <= MAX_COMMENT_CHARS, name="comment_length"),
)


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class RatingSetInfo:
    name: str
    n_items: int
    systems: tuple[str, ...]         # every system with a response in the set
    pair_counts: dict[str, int]      # "a vs b" -> number of items comparing that pair


@dataclass(frozen=True)
class Assignment:
    """What the annotator is shown. Deliberately names no system: the pair and its
    A/B order stay server-side under `token` until the vote is stored."""
    token: str                       # opaque; pass it back to submit_rating
    item_id: int
    rating_set: str
    audio: str                       # as given in the rating set's item
    transcript: str
    response_a: str
    response_b: str


@dataclass(frozen=True)
class Rating:
    id: int
    rating_set: str
    item_id: int
    item_key: str
    audio: str
    emotion: str
    annotator_id: str
    system_a: str                    # revealed only once the vote is stored
    system_b: str
    choice: str                      # "A", "B" or "tie"
    empathy_a: int                   # 1..5, of response A
    empathy_b: int
    quality_a: int
    quality_b: int
    comment: str
    idempotency_key: str
    shown_at: datetime
    submitted_at: datetime
    time_spent_s: float              # from the item's last showing to the vote (server clock)
    gold: str                        # a gold item's accepted answers, comma-separated; "" otherwise

    @property
    def preferred(self) -> str:
        """The preferred system's name, "tie" or "both_bad"."""
        return {"A": self.system_a, "B": self.system_b}.get(self.choice, self.choice)

    @property
    def swapped(self) -> bool:
        """Whether A showed the pair's second system (the placement drawn for this rating)."""
        return self.system_a > self.system_b

    @property
    def gold_passed(self) -> bool | None:
        """On a gold item, whether the answer is an accepted one; None on other items."""
        return self.preferred in self.gold.split(",") if self.gold else None

    def to_dict(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["preferred"] = self.preferred
        row["swapped"] = self.swapped
        row["gold_passed"] = self.gold_passed
        row["shown_at"] = self.shown_at.isoformat()
        row["submitted_at"] = self.submitted_at.isoformat()
        return row


RATING_EXPORT_FIELDS = tuple(f.name for f in dataclasses.fields(Rating)) + ("preferred", "swapped", "gold_passed")


@dataclass(frozen=True)
class Progress:
    rated: int
    total: int
    skipped: int = 0                 # skipped and not rated yet (they come back at the end)

    @property
    def remaining(self) -> int:
        return self.total - self.rated


# ----------------------------------------------------------------------------- validation

def clean_text(value: Any, field: str, max_chars: int) -> str:
    """Plain text with control characters removed; too long is an error, not a cut."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RatingError(f"{field} must be text, got {type(value).__name__}")
    text = _UNSAFE_CHARS.sub("", value.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if len(text) > max_chars:
        raise RatingError(f"{field} is {len(text)} characters long; the limit is {max_chars}")
    return text


def _check_name(value: Any, field: str, pattern: re.Pattern = NAME_PATTERN) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value.strip()):
        raise RatingError(f"{field} must match {pattern.pattern}, got {_preview(value)}")
    return value.strip()


def _check_score(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise RatingError(f"{field} must be an integer from 1 to 5, got {value!r}")
    try:
        score = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise RatingError(f"{field} must be an integer from 1 to 5, got {_preview(value)}") from None
    if not score.is_integer() or not SCORE_RANGE[0] <= score <= SCORE_RANGE[1]:
        raise RatingError(f"{field} must be an integer from 1 to 5, got {_preview(value)}")
    return int(score)


def _check_choice(value: Any) -> str:
    choice = {"a": "A", "b": "B", "tie": "tie", "both_bad": "both_bad", "both bad": "both_bad"}.get(
        str(value).strip().lower()) if isinstance(value, str) else None
    if choice is None:
        raise RatingError(f"choice must be one of A, B, tie, both_bad, got {_preview(value)}")
    return choice


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _clean_item(index: int, item: Any) -> dict[str, Any]:
    where = f"item {index}"
    if not isinstance(item, dict):
        raise RatingError(f"{where} must be a dict, got {type(item).__name__}")
    audio = clean_text(item.get("audio"), f"{where} audio", MAX_AUDIO_PATH_CHARS)
    if not audio:
        raise RatingError(f"{where} has no audio path")
    responses = item.get("responses")
    if not isinstance(responses, dict) or len(responses) < 2:
        raise RatingError(f"{where} needs responses from at least two systems, as {{system: text}}")
    cleaned = {
        "audio": audio,
        "emotion": clean_text(item.get("emotion"), f"{where} emotion", MAX_EMOTION_CHARS),
        "transcript": clean_text(item.get("transcript"), f"{where} transcript", MAX_TRANSCRIPT_CHARS),
        "responses": {
            _check_name(system, f"{where} system name", SET_OR_SYSTEM_PATTERN):
                clean_text(text, f"{where} response of {system}", MAX_RESPONSE_CHARS)
            for system, text in sorted(responses.items(), key=lambda kv: str(kv[0]))},
    }
    gold = item.get("gold")
    if gold is not None:
        accepted = [gold] if isinstance(gold, str) else gold
        if (not isinstance(accepted, (list, tuple)) or not accepted
                or any(a not in (*cleaned["responses"], *OUTCOMES) for a in accepted)):
            raise RatingError(f"{where} gold must list accepted answers: its systems, tie or both_bad")
        if len(cleaned["responses"]) != 2:
            raise RatingError(f"{where} is a gold item and needs exactly two responses")
        cleaned["gold"] = ",".join(sorted(set(accepted)))
    given_key = item.get("item_id")
    cleaned["item_key"] = (_check_name(str(given_key), f"{where} item_id", KEY_PATTERN)
                           if given_key is not None else _content_key(cleaned))
    return cleaned


def _content_key(item: dict[str, Any]) -> str:
    """A stable id from the item's audio, emotion and transcript."""
    text = json.dumps([item["audio"], item["emotion"], item["transcript"]], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _as_utc(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes; everything stored here is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _pair_name(system_1: str, system_2: str) -> str:
    return f"{system_1} vs {system_2}"


def _balanced_pairs(items: list[dict[str, Any]], seed: int) -> list[tuple[str, str]]:
    """One pair per item, each item's pair the least used so far among the pairs it can
    show (random among ties, items visited in a seeded random order): pair counts differ
    by at most one when every item has every system."""
    rng = random.Random(seed)
    counts: dict[tuple[str, str], int] = {}
    pairs: list[tuple[str, str]] = [tuple(sorted(item["responses"])) if item.get("gold") else ("", "")
                                    for item in items]
    for index in rng.sample(range(len(items)), len(items)):
        if items[index].get("gold"):
            continue  # a gold item shows its own two responses
        options = list(itertools.combinations(sorted(items[index]["responses"]), 2))
        fewest = min(counts.get(pair, 0) for pair in options)
        pairs[index] = rng.choice([pair for pair in options if counts.get(pair, 0) == fewest])
        counts[pairs[index]] = counts.get(pairs[index], 0) + 1
    return pairs


# ----------------------------------------------------------------------------- engine

def _default_sqlite_url(data_dir: str | os.PathLike | None) -> str:
    directory = Path(data_dir or os.environ.get("SEMOLLAMA_DATA_DIR") or DEFAULT_DATA_DIR).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # os.access says yes to root even on read-only mounts; a real write tells the truth.
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as error:
        raise RatingError(
            f"cannot write the ratings database in {directory} ({error.strerror or error}); "
            "set SEMOLLAMA_DATA_DIR to a writable directory or SEMOLLAMA_RATINGS_URL "
            "to a database URL") from None
    return f"sqlite:///{(directory / 'ratings.sqlite').resolve()}"


def _make_engine(url: str) -> Engine:
    try:
        engine = create_engine(url)
    except (SQLAlchemyError, ValueError, ImportError) as error:
        raise RatingError(f"cannot use ratings database URL: {type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}") from None
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    on_disk = engine.url.database not in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # We emit BEGIN ourselves (below), so the driver must not.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if on_disk:
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # IMMEDIATE takes the write lock up front: concurrent writers wait for the busy
        # timeout instead of failing when a read transaction tries to upgrade.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _upgrade_schema(engine: Engine) -> None:
    """A database written before schema 2 (no both_bad, gold, skip or time spent) keeps its
    tables under a _v1 suffix, untouched, and gets fresh ones; nothing is converted."""
    tables = set(inspect(engine).get_table_names())
    if "schema_info" in tables or "ratings" not in tables:
        return
    with engine.begin() as conn:
        for name in ("ratings", "assignments", "responses", "items", "rating_sets"):
            if name in tables:
                conn.exec_driver_sql(f"ALTER TABLE {name} RENAME TO {name}_v1")


def _redacted_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


# ----------------------------------------------------------------------------- store

class RatingStore:
    """The ratings database. Thread-safe; share one instance per process."""

    def __init__(self, url: str | None = None, data_dir: str | os.PathLike | None = None,
                 admin_password: str | None = None):
        """url: any SQLAlchemy URL; default env SEMOLLAMA_RATINGS_URL, else SQLite
        `ratings.sqlite` in data_dir (default env SEMOLLAMA_DATA_DIR, else
        ~/.local/share/semollama). admin_password: guards exports; default env
        SEMOLLAMA_ADMIN_PASSWORD; unset means exports are open."""
        url = url or os.environ.get("SEMOLLAMA_RATINGS_URL") or _default_sqlite_url(data_dir)
        self._engine = _make_engine(url)
        password = admin_password if admin_password is not None else \
            os.environ.get("SEMOLLAMA_ADMIN_PASSWORD")
        self._admin_password = password or None
        try:
            _upgrade_schema(self._engine)
            metadata.create_all(self._engine)
            with self._engine.begin() as conn:
                if conn.scalar(select(func.count()).select_from(schema_table)) == 0:
                    conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
        except SQLAlchemyError as error:
            raise RatingError(f"cannot open the ratings database {_redacted_url(self._engine)}: "
                              f"{type(error.orig or error).__name__}: {error.orig or error}"
                              ) from None

    @property
    def url(self) -> str:
        return _redacted_url(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    # -- rating sets

    def add_rating_set(self, name: str, items: Sequence[dict], seed: int = 0) -> RatingSetInfo:
        """Stores a rating set; adding the same name with the same items again is a no-op,
        with different items an error. Each item: {"audio", "emotion", "transcript",
        "responses": {system: text}, optional "item_id"}. seed: how pairs are drawn."""
        name = _check_name(name, "rating set name", SET_OR_SYSTEM_PATTERN)
        if not isinstance(items, (list, tuple)) or not 0 < len(items) <= MAX_ITEMS_PER_SET:
            raise RatingError(f"items must be a non-empty list of at most {MAX_ITEMS_PER_SET} dicts")
        cleaned = [_clean_item(index, item) for index, item in enumerate(items)]
        keys = [item["item_key"] for item in cleaned]
        if len(set(keys)) != len(keys):
            raise RatingError(f"rating set {name} has duplicate items (same item_id, or same "
                              "audio, emotion and transcript)")
        fingerprint = hashlib.sha256(json.dumps(cleaned, sort_keys=True).encode()).hexdigest()
        try:
            with self._engine.begin() as conn:
                if not self._same_set_exists(conn, name, fingerprint):
                    self._insert_set(conn, name, fingerprint, cleaned, _balanced_pairs(cleaned, seed))
        except IntegrityError:  # another process added it at the same moment
            with self._engine.begin() as conn:
                self._same_set_exists(conn, name, fingerprint)
        return self.rating_set_info(name)

    def _same_set_exists(self, conn: Connection, name: str, fingerprint: str) -> bool:
        stored = conn.scalar(select(rating_sets_table.c.fingerprint)
                             .where(rating_sets_table.c.name == name))
        if stored is not None and stored != fingerprint:
            raise RatingError(f"rating set {name} already exists with different items; "
                              "choose another name")
        return stored is not None

    @staticmethod
    def _insert_set(conn: Connection, name: str, fingerprint: str,
                    items: list[dict], pairs: list[tuple[str, str]]) -> None:
        set_id = conn.execute(rating_sets_table.insert().values(
            name=name, fingerprint=fingerprint, created_at=_now())).inserted_primary_key[0]
        for position, (item, pair) in enumerate(zip(items, pairs)):
            item_id = conn.execute(items_table.insert().values(
                rating_set_id=set_id, position=position, item_key=item["item_key"],
                audio=item["audio"], emotion=item["emotion"], transcript=item["transcript"],
                system_1=pair[0], system_2=pair[1], gold=item.get("gold"))).inserted_primary_key[0]
            conn.execute(responses_table.insert(), [
                {"item_id": item_id, "system": system, "text": text}
                for system, text in item["responses"].items()])

    def rating_set_info(self, name: str) -> RatingSetInfo:
        with self._engine.connect() as conn:
            set_id = self._set_id(conn, name)
            pairs = conn.execute(select(items_table.c.system_1, items_table.c.system_2)
                                 .where(items_table.c.rating_set_id == set_id)).all()
            systems = conn.scalars(
                select(responses_table.c.system).distinct()
                .join(items_table, items_table.c.id == responses_table.c.item_id)
                .where(items_table.c.rating_set_id == set_id)).all()
        pair_counts: dict[str, int] = {}
        for system_1, system_2 in pairs:
            pair_counts[_pair_name(system_1, system_2)] = pair_counts.get(
                _pair_name(system_1, system_2), 0) + 1
        return RatingSetInfo(name, len(pairs), tuple(sorted(systems)), dict(sorted(pair_counts.items())))

    def rating_sets(self) -> list[str]:
        with self._engine.connect() as conn:
            return list(conn.scalars(select(rating_sets_table.c.name).order_by(rating_sets_table.c.id)))

    @staticmethod
    def _set_id(conn: Connection, name: str) -> int:
        name = _check_name(name, "rating set name", SET_OR_SYSTEM_PATTERN)
        set_id = conn.scalar(select(rating_sets_table.c.id).where(rating_sets_table.c.name == name))
        if set_id is None:
            raise RatingError(f"no rating set named {name}; add it with add_rating_set first")
        return set_id

    # -- assignments

    def next_assignment(self, annotator_id: str, rating_set: str,
                        seed: int | None = None) -> Assignment | None:
        """The annotator's open assignment if there is one (resume), else a new one for an
        item they have not seen; None once they have rated every item. seed makes the item
        order and A/B order reproducible (default: fresh randomness)."""
        annotator_id = _check_name(annotator_id, "annotator id")
        for _attempt in range(3):
            try:
                with self._engine.begin() as conn:
                    return self._next_assignment(conn, annotator_id, rating_set, seed)
            except IntegrityError:
                continue  # a concurrent call for the same annotator won the race; look again
        raise RatingError(f"could not assign an item to {annotator_id}; try again")

    def _next_assignment(self, conn: Connection, annotator_id: str, rating_set: str,
                         seed: int | None) -> Assignment | None:
        set_id = self._set_id(conn, rating_set)
        a, i = assignments_table.c, items_table.c
        unrated = select(a.token).join(items_table, i.id == a.item_id).where(
            a.annotator_id == annotator_id, i.rating_set_id == set_id,
            ~select(ratings_table.c.id).where(ratings_table.c.token == a.token).exists())
        open_token = conn.scalar(unrated.where(a.skipped_at.is_(None)).order_by(a.shown_at, a.token).limit(1))
        if open_token is not None:
            return self._show(conn, open_token)
        seen = select(a.item_id).where(a.annotator_id == annotator_id)
        candidates = conn.execute(select(i.id, i.system_1, i.system_2).where(
            i.rating_set_id == set_id, i.id.not_in(seen)).order_by(i.id)).all()
        if not candidates:  # skipped items come back, oldest skip first, once all others are done
            skipped = conn.scalar(unrated.where(a.skipped_at.is_not(None)).order_by(a.skipped_at, a.token).limit(1))
            if skipped is None:
                return None
            conn.execute(update(assignments_table).where(a.token == skipped).values(skipped_at=None))
            return self._show(conn, skipped)
        rng = random.SystemRandom() if seed is None else \
            random.Random(f"{seed}|{annotator_id}|{len(candidates)}")
        item_id, system_1, system_2 = rng.choice(candidates)
        system_a, system_b = self._balanced_order(conn, item_id, system_1, system_2, rng)
        token, now = secrets.token_urlsafe(24), _now()
        conn.execute(assignments_table.insert().values(
            token=token, annotator_id=annotator_id, item_id=item_id,
            system_a=system_a, system_b=system_b, shown_at=now, displayed_at=now))
        return self._load_assignment(conn, token)

    def _show(self, conn: Connection, token: str) -> Assignment:
        """An assignment shown again: the time spent on it counts from now."""
        conn.execute(update(assignments_table).where(assignments_table.c.token == token)
                     .values(displayed_at=_now()))
        return self._load_assignment(conn, token)

    def skip_assignment(self, token: str, annotator_id: str) -> None:
        """Puts the annotator's open item aside; it comes back once every other item is done."""
        annotator_id = _check_name(annotator_id, "annotator id")
        with self._engine.begin() as conn:
            self._owned_assignment(conn, token, annotator_id)
            if conn.scalar(select(ratings_table.c.id).where(ratings_table.c.token == token)) is not None:
                raise RatingError("this item is already rated; a rated item cannot be skipped")
            conn.execute(update(assignments_table).where(assignments_table.c.token == token)
                         .values(skipped_at=_now()))

    @staticmethod
    def _balanced_order(conn: Connection, item_id: int, system_1: str, system_2: str,
                        rng: random.Random) -> tuple[str, str]:
        """The A/B order shown less often on this item so far (random on a tie), so that
        annotators of one item see both orders and position bias cancels."""
        a = assignments_table.c
        first_as_a = conn.scalar(select(func.count()).select_from(assignments_table)
                                 .where(a.item_id == item_id, a.system_a == system_1))
        second_as_a = conn.scalar(select(func.count()).select_from(assignments_table)
                                  .where(a.item_id == item_id, a.system_a == system_2))
        if first_as_a == second_as_a:
            return (system_1, system_2) if rng.random() < 0.5 else (system_2, system_1)
        return (system_1, system_2) if first_as_a < second_as_a else (system_2, system_1)

    @staticmethod
    def _load_assignment(conn: Connection, token: str) -> Assignment:
        a, i, s = assignments_table.c, items_table.c, rating_sets_table.c
        row = conn.execute(
            select(a.token, a.item_id, a.system_a, a.system_b, s.name, i.audio, i.transcript)
            .join(items_table, i.id == a.item_id)
            .join(rating_sets_table, s.id == i.rating_set_id)
            .where(a.token == token)).one()
        texts = dict(conn.execute(select(responses_table.c.system, responses_table.c.text)
                                  .where(responses_table.c.item_id == row.item_id)).all())
        return Assignment(token=row.token, item_id=row.item_id, rating_set=row.name,
                          audio=row.audio, transcript=row.transcript,
                          response_a=texts[row.system_a], response_b=texts[row.system_b])

    def get_assignment(self, token: str, annotator_id: str) -> Assignment:
        """Shows an assignment again (e.g. after a page reload), to its own annotator only."""
        annotator_id = _check_name(annotator_id, "annotator id")
        with self._engine.begin() as conn:
            self._owned_assignment(conn, token, annotator_id)
            return self._show(conn, token)

    @staticmethod
    def _owned_assignment(conn: Connection, token: Any, annotator_id: str):
        row = None
        if isinstance(token, str) and len(token) <= 64:
            row = conn.execute(select(assignments_table)
                               .where(assignments_table.c.token == token)).one_or_none()
        if row is None:
            raise RatingError("unknown assignment token; ask for the next assignment")
        # Same message length and no details: a token of someone else reveals nothing.
        if not hmac.compare_digest(row.annotator_id.encode(), annotator_id.encode()):
            raise RatingAccessError("this assignment belongs to another annotator")
        return row

    # -- ratings

    def submit_rating(self, token: str, annotator_id: str, choice: str, *,
                      empathy_a: int, empathy_b: int, quality_a: int, quality_b: int,
                      comment: str = "", idempotency_key: str | None = None) -> Rating:
        """Stores one vote in one transaction and returns it, now naming system_a/system_b.
        A repeat with the same idempotency_key (double click) returns the stored rating and
        writes nothing; a second rating of the same item by the same annotator is refused."""
        annotator_id = _check_name(annotator_id, "annotator id")
        values = {
            "choice": _check_choice(choice),
            **{name: _check_score(value, name) for name, value in zip(
                _SCORE_COLUMNS, (empathy_a, empathy_b, quality_a, quality_b))},
            "comment": clean_text(comment, "comment", MAX_COMMENT_CHARS),
            "idempotency_key": (_check_name(idempotency_key, "idempotency key", KEY_PATTERN)
                                if idempotency_key is not None else secrets.token_urlsafe(16)),
        }
        try:
            with self._engine.begin() as conn:
                return self._submit(conn, token, annotator_id, values)
        except IntegrityError:
            # A concurrent submit got there first: same key -> its rating, else refused.
            with self._engine.begin() as conn:
                return self._submit(conn, token, annotator_id, values)

    def _submit(self, conn: Connection, token: str, annotator_id: str,
                values: dict[str, Any]) -> Rating:
        assignment = self._owned_assignment(conn, token, annotator_id)
        r = ratings_table.c
        existing = conn.execute(select(r.id, r.token).where(
            r.idempotency_key == values["idempotency_key"])).one_or_none()
        if existing is not None:
            if existing.token != token:
                raise RatingError("this idempotency key was already used for another rating")
            return self._load_rating(conn, existing.id)
        if conn.scalar(select(r.id).where(r.annotator_id == annotator_id,
                                          r.item_id == assignment.item_id)) is not None:
            raise RatingError(f"item {assignment.item_id} is already rated by {annotator_id}; "
                              "a rating is written once")
        now = _now()
        spent = max(0.0, (now - _as_utc(assignment.displayed_at)).total_seconds())
        rating_id = conn.execute(ratings_table.insert().values(
            token=token, annotator_id=annotator_id, item_id=assignment.item_id,
            system_a=assignment.system_a, system_b=assignment.system_b,
            shown_at=assignment.shown_at, submitted_at=now, time_spent_s=round(spent, 3),
            **values)).inserted_primary_key[0]
        conn.execute(update(assignments_table).where(assignments_table.c.token == token).values(skipped_at=None))
        return self._load_rating(conn, rating_id)

    @staticmethod
    def _rating_query():
        r, i, s = ratings_table.c, items_table.c, rating_sets_table.c
        return (select(r.id, s.name.label("rating_set"), r.item_id, i.item_key, i.audio, i.emotion,
                       r.annotator_id, r.system_a, r.system_b, r.choice,
                       *[r[name] for name in _SCORE_COLUMNS], r.comment, r.idempotency_key,
                       r.shown_at, r.submitted_at, r.time_spent_s, func.coalesce(i.gold, "").label("gold"))
                .join(items_table, i.id == r.item_id)
                .join(rating_sets_table, s.id == i.rating_set_id)
                .order_by(r.id))

    @staticmethod
    def _to_rating(row) -> Rating:
        fields = row._asdict()
        fields["shown_at"] = _as_utc(fields["shown_at"])
        fields["submitted_at"] = _as_utc(fields["submitted_at"])
        return Rating(**fields)

    def _load_rating(self, conn: Connection, rating_id: int) -> Rating:
        row = conn.execute(self._rating_query().where(ratings_table.c.id == rating_id)).one()
        return self._to_rating(row)

    def ratings_for(self, annotator_id: str) -> list[Rating]:
        """The annotator's own ratings, oldest first."""
        annotator_id = _check_name(annotator_id, "annotator id")
        with self._engine.connect() as conn:
            rows = conn.execute(self._rating_query()
                                .where(ratings_table.c.annotator_id == annotator_id)).all()
        return [self._to_rating(row) for row in rows]

    def progress(self, annotator_id: str, rating_set: str) -> Progress:
        annotator_id = _check_name(annotator_id, "annotator id")
        with self._engine.connect() as conn:
            set_id = self._set_id(conn, rating_set)
            total = conn.scalar(select(func.count()).select_from(items_table)
                                .where(items_table.c.rating_set_id == set_id))
            rated = conn.scalar(
                select(func.count()).select_from(ratings_table)
                .join(items_table, items_table.c.id == ratings_table.c.item_id)
                .where(items_table.c.rating_set_id == set_id,
                       ratings_table.c.annotator_id == annotator_id))
            a = assignments_table.c
            skipped = conn.scalar(
                select(func.count()).select_from(assignments_table)
                .join(items_table, items_table.c.id == a.item_id)
                .where(items_table.c.rating_set_id == set_id, a.annotator_id == annotator_id,
                       a.skipped_at.is_not(None),
                       ~select(ratings_table.c.id).where(ratings_table.c.token == a.token).exists()))
        return Progress(rated=rated, total=total, skipped=skipped)

    # -- export

    def _check_admin(self, admin_password: str | None) -> None:
        if self._admin_password is None:
            return
        given = (admin_password or "").encode()
        if not hmac.compare_digest(given, self._admin_password.encode()):
            raise RatingAccessError("wrong or missing admin password (SEMOLLAMA_ADMIN_PASSWORD)")

    def export_ratings(self, admin_password: str | None = None) -> list[dict[str, Any]]:
        """Every rating as a dict (fields RATING_EXPORT_FIELDS), oldest first. Needs the
        admin password when one is set."""
        self._check_admin(admin_password)
        with self._engine.connect() as conn:
            rows = conn.execute(self._rating_query()).all()
        return [self._to_rating(row).to_dict() for row in rows]

    def export_jsonl(self, admin_password: str | None = None) -> str:
        """export_ratings as JSON Lines, one rating a line."""
        return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in self.export_ratings(admin_password))

    def export_csv(self, admin_password: str | None = None) -> str:
        """export_ratings as CSV text. Free-text cells that a spreadsheet would run as a
        formula get a leading apostrophe."""
        records = self.export_ratings(admin_password)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=RATING_EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({key: _defuse_formula(value) for key, value in record.items()})
        return out.getvalue()

    def push_to_hub(self, repo_id: str, admin_password: str | None = None,
                    path_in_repo: str = "ratings.csv") -> str:
        """Uploads export_csv to a private Hugging Face dataset repo; returns its URL.
        The token comes from env HF_TOKEN only and is never logged or put in an error."""
        self._check_admin(admin_password)
        repo_id = _check_name(repo_id, "repo id", REPO_PATTERN)
        token = os.environ.get("HF_TOKEN", "").strip()
        if not token:
            raise HubError("set HF_TOKEN to a Hugging Face write token to push ratings")
        payload = self.export_csv(admin_password).encode()
        return _upload_dataset_file(repo_id, path_in_repo, payload, token)


def _defuse_formula(value: Any) -> Any:
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def _hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _host_and_port(endpoint: str) -> tuple[str, int]:
    parsed = urlparse(endpoint)
    return parsed.hostname or "huggingface.co", parsed.port or (80 if parsed.scheme == "http" else 443)


def _upload_dataset_file(repo_id: str, path_in_repo: str, payload: bytes, token: str) -> str:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise HubError("HF_HUB_OFFLINE is set; unset it to push ratings to the Hub")
    endpoint = _hub_endpoint()
    host, port = _host_and_port(endpoint)
    try:  # fail fast and clearly offline, instead of after the client's retries
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        raise HubError(f"cannot reach the Hugging Face Hub at {host}:{port} "
                       f"({type(error).__name__}); pushing needs network access") from None
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise HubError("pushing ratings needs the huggingface_hub package") from None
    try:
        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
        api.upload_file(path_or_fileobj=payload, path_in_repo=path_in_repo, repo_id=repo_id,
                        repo_type="dataset", commit_message="Update ratings")
    except Exception as error:  # noqa: BLE001 - any client error becomes one safe line
        detail = str(error).splitlines()[0] if str(error) else ""
        raise HubError(f"push to {repo_id} failed: {type(error).__name__}: "
                       f"{detail.replace(token, '***')[:200]}") from None
    return f"{endpoint}/datasets/{repo_id}"
