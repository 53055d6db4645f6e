"""Shared by the ratings tests (test_ratings_store.py, test_ratings_analysis.py): the
systems, a small rating set, the `store` fixture over a real SQLite file, and a vote.
Not a test module (pytest collects test_*.py only); the test modules import it as
`ratings_support` and load it with `pytest_plugins = ["ratings_support"]` for the
fixture, the way they use conftest_app.
"""
import pytest

from ui.ratings import RatingStore

SYSTEMS = ("speech_llm", "text_only", "cascade")


def make_items(n_items=6, systems=SYSTEMS):
    # Response texts deliberately never contain a system's name (blindness checks).
    return [{"audio": f"clips/utt{i}.wav", "emotion": ("sad", "happy")[i % 2],
             "transcript": f"I lost my keys again, number {i}.",
             "responses": {system: f"reply {k} to utterance {i}" for k, system in enumerate(systems)}}
            for i in range(n_items)]


@pytest.fixture
def store(tmp_path):
    store = RatingStore(data_dir=tmp_path, admin_password="")
    store.add_rating_set("pilot", make_items())
    yield store
    store.close()


def vote(store, annotator, choice="A", key=None, assignment=None, **scores):
    assignment = assignment or store.next_assignment(annotator, "pilot")
    scores = {"empathy_a": 4, "empathy_b": 2, "quality_a": 3, "quality_b": 5, **scores}
    return store.submit_rating(assignment.token, annotator, choice, idempotency_key=key, **scores)
