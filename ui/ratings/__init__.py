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

The package: `schema` (limits, errors, tables), `records` (what the store hands out, and
input checks), `storage` (engine, schema upgrade, CSV hygiene, Hub upload) and `store`
(`RatingStore`). Import from `ui.ratings`.
"""

from .records import (RATING_EXPORT_FIELDS, Assignment, Progress, Rating, RatingSetInfo,  # noqa: F401
    clean_text)
from .schema import (CHOICES, OUTCOMES, HubError, RatingAccessError, RatingError,  # noqa: F401
    assignments_table, items_table, rating_sets_table, ratings_table, responses_table)
from .store import RatingStore  # noqa: F401

__all__ = [
    "Assignment", "Progress", "Rating", "RatingAccessError", "RatingError", "RatingSetInfo",
    "RatingStore", "HubError", "RATING_EXPORT_FIELDS", "CHOICES", "OUTCOMES", "clean_text",
]
