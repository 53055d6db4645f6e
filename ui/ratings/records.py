"""What the ratings store hands out (rating sets, assignments, ratings, progress) and how
it checks what it is given: plain text, names, scores, choices and rating-set items."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .schema import (KEY_PATTERN, MAX_AUDIO_PATH_CHARS, MAX_EMOTION_CHARS, MAX_RESPONSE_CHARS, MAX_TRANSCRIPT_CHARS,
    NAME_PATTERN, OUTCOMES, SCORE_RANGE, SET_OR_SYSTEM_PATTERN, RatingError)

# C0/C1 controls except tab and newline, bidi overrides/isolates (they can make a
# comment display as something else), BOM, and lone surrogates (not encodable as UTF-8).
_UNSAFE_CHARS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")

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


def check_name(value: Any, field: str, pattern: re.Pattern = NAME_PATTERN) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value.strip()):
        raise RatingError(f"{field} must match {pattern.pattern}, got {_preview(value)}")
    return value.strip()


def check_score(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise RatingError(f"{field} must be an integer from 1 to 5, got {value!r}")
    try:
        score = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise RatingError(f"{field} must be an integer from 1 to 5, got {_preview(value)}") from None
    if not score.is_integer() or not SCORE_RANGE[0] <= score <= SCORE_RANGE[1]:
        raise RatingError(f"{field} must be an integer from 1 to 5, got {_preview(value)}")
    return int(score)


def check_choice(value: Any) -> str:
    choice = {"a": "A", "b": "B", "tie": "tie", "both_bad": "both_bad", "both bad": "both_bad"}.get(
        str(value).strip().lower()) if isinstance(value, str) else None
    if choice is None:
        raise RatingError(f"choice must be one of A, B, tie, both_bad, got {_preview(value)}")
    return choice


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def clean_item(index: int, item: Any) -> dict[str, Any]:
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
            check_name(system, f"{where} system name", SET_OR_SYSTEM_PATTERN):
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
    cleaned["item_key"] = (check_name(str(given_key), f"{where} item_id", KEY_PATTERN)
                           if given_key is not None else _content_key(cleaned))
    return cleaned


def _content_key(item: dict[str, Any]) -> str:
    """A stable id from the item's audio, emotion and transcript."""
    text = json.dumps([item["audio"], item["emotion"], item["transcript"]], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes; everything stored here is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def pair_name(system_1: str, system_2: str) -> str:
    return f"{system_1} vs {system_2}"


def balanced_pairs(items: list[dict[str, Any]], seed: int) -> list[tuple[str, str]]:
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
