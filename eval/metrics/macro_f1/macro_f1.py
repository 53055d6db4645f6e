"""Macro-averaged F1 over classes, for string labels; a local copy of the hub's `f1`
(average="macro") so it loads offline.

Averaged over the classes in `labels` that occur among the references (the same classes
as unweighted accuracy); predictions of other labels still count against precision of
nothing and against recall of their true class. A class never predicted has F1 0.
"""
import datasets
import evaluate

_KWARGS = """
Args:
    predictions (list of str): predicted labels.
    references (list of str): true labels.
    labels (list of str, optional): classes to average over (those without references are left out).
Returns:
    macro_f1 (float): mean per-class F1 in [0, 1].
Example:
    >>> f1 = evaluate.load("eval/metrics/macro_f1")
    >>> f1.compute(predictions=["a", "b"], references=["a", "b"])["macro_f1"]
    1.0
"""


class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, labels=None):
        classes = [c for c in (labels or sorted(set(references))) if c in set(references)]
        if not classes:
            raise ValueError("macro_f1: no reference belongs to the given labels.")
        scores = []
        for c in classes:
            tp = sum(p == c and r == c for p, r in zip(predictions, references))
            predicted, actual = sum(p == c for p in predictions), sum(r == c for r in references)
            scores.append(2 * tp / (predicted + actual) if tp else 0.0)
        return {"macro_f1": sum(scores) / len(scores)}
