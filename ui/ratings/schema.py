"""The ratings database's limits, errors and tables (SQLAlchemy Core): every constraint
that matters is in the schema too."""

from __future__ import annotations

import re

from sqlalchemy import (CheckConstraint, Column, DateTime, Float, ForeignKey, ForeignKeyConstraint, Integer,
    MetaData, String, Table, Text, UniqueConstraint, func)

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

SCORE_COLUMNS = ("empathy_a", "empathy_b", "quality_a", "quality_b")

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
    *[Column(name, Integer, nullable=False) for name in SCORE_COLUMNS],
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
      for name in SCORE_COLUMNS],
    CheckConstraint(func.char_length(Column("comment")) <= MAX_COMMENT_CHARS, name="comment_length"),
)
