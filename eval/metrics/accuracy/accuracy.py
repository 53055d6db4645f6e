"""Accuracy (weighted accuracy, WA, in SER papers): the share of exact label matches.

A local copy of the hub's `accuracy` for string labels, so it loads offline.
"""
import datasets
import evaluate

_KWARGS = """
Args:
    predictions (list of str): predicted labels.
    references (list of str): true labels.
Returns:
    accuracy (float): share of predictions equal to their reference, in [0, 1].
Example:
    >>> acc = evaluate.load("eval/metrics/accuracy")
    >>> acc.compute(predictions=["a", "b"], references=["a", "a"])["accuracy"]
    0.5
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        if not references:
            raise ValueError("accuracy: no predictions to score.")
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / len(references)}
