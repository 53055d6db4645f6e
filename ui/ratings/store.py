"""The ratings store: rating sets, blind assignments, votes and exports, one transaction
each. See the package's docstring for the rating protocol."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import random
import secrets
from typing import Any, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .records import (Assignment, Progress, Rating, RatingSetInfo, RATING_EXPORT_FIELDS, as_utc, balanced_pairs,
    check_choice, check_name, check_score, clean_item, clean_text, now_utc, pair_name)
from .schema import (KEY_PATTERN, MAX_COMMENT_CHARS, MAX_ITEMS_PER_SET, REPO_PATTERN, SCHEMA_VERSION, SCORE_COLUMNS,
    SET_OR_SYSTEM_PATTERN, HubError, RatingAccessError, RatingError, assignments_table, items_table, metadata,
    rating_sets_table, ratings_table, responses_table, schema_table)
from .storage import default_sqlite_url, defuse_formula, make_engine, redacted_url, upgrade_schema, upload_dataset_file


class RatingStore:
    """The ratings database. Thread-safe; share one instance per process."""

    def __init__(self, url: str | None = None, data_dir: str | os.PathLike | None = None,
                 admin_password: str | None = None):
        """url: any SQLAlchemy URL; default env SEMOLLAMA_RATINGS_URL, else SQLite
        `ratings.sqlite` in data_dir (default env SEMOLLAMA_DATA_DIR, else
        ~/.local/share/semollama). admin_password: guards exports; default env
        SEMOLLAMA_ADMIN_PASSWORD; unset means exports are open."""
        url = url or os.environ.get("SEMOLLAMA_RATINGS_URL") or default_sqlite_url(data_dir)
        self._engine = make_engine(url)
        password = admin_password if admin_password is not None else \
            os.environ.get("SEMOLLAMA_ADMIN_PASSWORD")
        self._admin_password = password or None
        try:
            upgrade_schema(self._engine)
            metadata.create_all(self._engine)
            with self._engine.begin() as conn:
                if conn.scalar(select(func.count()).select_from(schema_table)) == 0:
                    conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
        except SQLAlchemyError as error:
            raise RatingError(f"cannot open the ratings database {redacted_url(self._engine)}: "
                              f"{type(error.orig or error).__name__}: {error.orig or error}"
                              ) from None

    @property
    def url(self) -> str:
        return redacted_url(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    # -- rating sets

    def add_rating_set(self, name: str, items: Sequence[dict], seed: int = 0) -> RatingSetInfo:
        """Stores a rating set; adding the same name with the same items again is a no-op,
        with different items an error. Each item: {"audio", "emotion", "transcript",
        "responses": {system: text}, optional "item_id"}. seed: how pairs are drawn."""
        name = check_name(name, "rating set name", SET_OR_SYSTEM_PATTERN)
        if not isinstance(items, (list, tuple)) or not 0 < len(items) <= MAX_ITEMS_PER_SET:
            raise RatingError(f"items must be a non-empty list of at most {MAX_ITEMS_PER_SET} dicts")
        cleaned = [clean_item(index, item) for index, item in enumerate(items)]
        keys = [item["item_key"] for item in cleaned]
        if len(set(keys)) != len(keys):
            raise RatingError(f"rating set {name} has duplicate items (same item_id, or same "
                              "audio, emotion and transcript)")
        fingerprint = hashlib.sha256(json.dumps(cleaned, sort_keys=True).encode()).hexdigest()
        try:
            with self._engine.begin() as conn:
                if not self._same_set_exists(conn, name, fingerprint):
                    self._insert_set(conn, name, fingerprint, cleaned, balanced_pairs(cleaned, seed))
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
            name=name, fingerprint=fingerprint, created_at=now_utc())).inserted_primary_key[0]
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
            pair_counts[pair_name(system_1, system_2)] = pair_counts.get(
                pair_name(system_1, system_2), 0) + 1
        return RatingSetInfo(name, len(pairs), tuple(sorted(systems)), dict(sorted(pair_counts.items())))

    def rating_sets(self) -> list[str]:
        with self._engine.connect() as conn:
            return list(conn.scalars(select(rating_sets_table.c.name).order_by(rating_sets_table.c.id)))

    @staticmethod
    def _set_id(conn: Connection, name: str) -> int:
        name = check_name(name, "rating set name", SET_OR_SYSTEM_PATTERN)
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
        annotator_id = check_name(annotator_id, "annotator id")
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
        token, now = secrets.token_urlsafe(24), now_utc()
        conn.execute(assignments_table.insert().values(
            token=token, annotator_id=annotator_id, item_id=item_id,
            system_a=system_a, system_b=system_b, shown_at=now, displayed_at=now))
        return self._load_assignment(conn, token)

    def _show(self, conn: Connection, token: str) -> Assignment:
        """An assignment shown again: the time spent on it counts from now."""
        conn.execute(update(assignments_table).where(assignments_table.c.token == token)
                     .values(displayed_at=now_utc()))
        return self._load_assignment(conn, token)

    def skip_assignment(self, token: str, annotator_id: str) -> None:
        """Puts the annotator's open item aside; it comes back once every other item is done."""
        annotator_id = check_name(annotator_id, "annotator id")
        with self._engine.begin() as conn:
            self._owned_assignment(conn, token, annotator_id)
            if conn.scalar(select(ratings_table.c.id).where(ratings_table.c.token == token)) is not None:
                raise RatingError("this item is already rated; a rated item cannot be skipped")
            conn.execute(update(assignments_table).where(assignments_table.c.token == token)
                         .values(skipped_at=now_utc()))

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
        annotator_id = check_name(annotator_id, "annotator id")
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
        annotator_id = check_name(annotator_id, "annotator id")
        values = {
            "choice": check_choice(choice),
            **{name: check_score(value, name) for name, value in zip(
                SCORE_COLUMNS, (empathy_a, empathy_b, quality_a, quality_b))},
            "comment": clean_text(comment, "comment", MAX_COMMENT_CHARS),
            "idempotency_key": (check_name(idempotency_key, "idempotency key", KEY_PATTERN)
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
        now = now_utc()
        spent = max(0.0, (now - as_utc(assignment.displayed_at)).total_seconds())
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
                       *[r[name] for name in SCORE_COLUMNS], r.comment, r.idempotency_key,
                       r.shown_at, r.submitted_at, r.time_spent_s, func.coalesce(i.gold, "").label("gold"))
                .join(items_table, i.id == r.item_id)
                .join(rating_sets_table, s.id == i.rating_set_id)
                .order_by(r.id))

    @staticmethod
    def _to_rating(row) -> Rating:
        fields = row._asdict()
        fields["shown_at"] = as_utc(fields["shown_at"])
        fields["submitted_at"] = as_utc(fields["submitted_at"])
        return Rating(**fields)

    def _load_rating(self, conn: Connection, rating_id: int) -> Rating:
        row = conn.execute(self._rating_query().where(ratings_table.c.id == rating_id)).one()
        return self._to_rating(row)

    def ratings_for(self, annotator_id: str) -> list[Rating]:
        """The annotator's own ratings, oldest first."""
        annotator_id = check_name(annotator_id, "annotator id")
        with self._engine.connect() as conn:
            rows = conn.execute(self._rating_query()
                                .where(ratings_table.c.annotator_id == annotator_id)).all()
        return [self._to_rating(row) for row in rows]

    def progress(self, annotator_id: str, rating_set: str) -> Progress:
        annotator_id = check_name(annotator_id, "annotator id")
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
            writer.writerow({key: defuse_formula(value) for key, value in record.items()})
        return out.getvalue()

    def push_to_hub(self, repo_id: str, admin_password: str | None = None,
                    path_in_repo: str = "ratings.csv") -> str:
        """Uploads export_csv to a private Hugging Face dataset repo; returns its URL.
        The token comes from env HF_TOKEN only and is never logged or put in an error."""
        self._check_admin(admin_password)
        repo_id = check_name(repo_id, "repo id", REPO_PATTERN)
        token = os.environ.get("HF_TOKEN", "").strip()
        if not token:
            raise HubError("set HF_TOKEN to a Hugging Face write token to push ratings")
        payload = self.export_csv(admin_password).encode()
        return upload_dataset_file(repo_id, path_in_repo, payload, token)
