"""Unweighted accuracy (UA): the mean of per-class recalls, the usual SER headline figure.

Classes are those given in `labels` that occur among the references (a class with no
reference has no recall); without `labels`, every class among the references. Predicted
labels outside the class set count as misses. Computed here (no hub download).
"""
import datasets
import evaluate

from semollama_core import unweighted_accuracy

_KWARGS = """
Args:
    predictions (list of str): predicted labels.
    references (list of str): true labels.
    labels (list of str, optional): classes to average over (those without references are left out).
Returns:
    unweighted_accuracy (float): mean per-class recall in [0, 1].
Example:
    >>> ua = evaluate.load("eval/metrics/unweighted_accuracy")
    >>> ua.compute(predictions=["a", "a", "a", "b"], references=["a", "a", "a", "a"])["unweighted_accuracy"]
    0.75
"""


class UnweightedAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, labels=None):
        classes = [c for c in (labels or sorted(set(references))) if c in set(references)]
        if not classes:
            raise ValueError("unweighted_accuracy: no reference belongs to the given labels.")
        return {"unweighted_accuracy": unweighted_accuracy(references, predictions, classes)}
