"""Where ratings live and where they go: the database engine (SQLite by default, set up
for concurrent writers; any SQLAlchemy URL by setting), schema upgrades, CSV hygiene and
the push to a Hugging Face dataset repo."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .schema import DEFAULT_DATA_DIR, SQLITE_BUSY_TIMEOUT_S, HubError, RatingError

# Leading characters a spreadsheet would run as a formula when it opens the CSV.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")



# ----------------------------------------------------------------------------- engine

def default_sqlite_url(data_dir: str | os.PathLike | None) -> str:
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


def make_engine(url: str) -> Engine:
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


def upgrade_schema(engine: Engine) -> None:
    """A database written before schema 2 (no both_bad, gold, skip or time spent) keeps its
    tables under a _v1 suffix, untouched, and gets fresh ones; nothing is converted."""
    tables = set(inspect(engine).get_table_names())
    if "schema_info" in tables or "ratings" not in tables:
        return
    with engine.begin() as conn:
        for name in ("ratings", "assignments", "responses", "items", "rating_sets"):
            if name in tables:
                conn.exec_driver_sql(f"ALTER TABLE {name} RENAME TO {name}_v1")


def redacted_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)



# ----------------------------------------------------------------------------- export

def defuse_formula(value: Any) -> Any:
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def _hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _host_and_port(endpoint: str) -> tuple[str, int]:
    parsed = urlparse(endpoint)
    return parsed.hostname or "huggingface.co", parsed.port or (80 if parsed.scheme == "http" else 443)


def upload_dataset_file(repo_id: str, path_in_repo: str, payload: bytes, token: str) -> str:
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
