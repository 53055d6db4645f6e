"""Scores shared by training, evaluation and the corpus audit."""
from __future__ import annotations

from typing import Sequence


def unweighted_accuracy(truth: Sequence, predicted: Sequence, labels: Sequence | None = None) -> float:
    """UA: the mean per-class recall over the classes present in `truth` (restricted to
    `labels` when given); NaN when no class is present."""
    truth, predicted = list(truth), list(predicted)
    classes = [c for c in (labels if labels is not None else dict.fromkeys(truth)) if c in set(truth)]
    recalls = []
    for c in classes:
        rows = [p for t, p in zip(truth, predicted) if t == c]
        recalls.append(sum(p == c for p in rows) / len(rows))
    return sum(recalls) / len(recalls) if recalls else float("nan")
