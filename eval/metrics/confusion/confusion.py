"""Confusion matrix for string labels: rows are true labels, columns predicted labels.

Rows and columns follow `labels` (default: sorted labels seen in references and
predictions). A prediction outside `labels` is counted in an extra last column "other"
only when one occurs, so every row sums to that class's number of references.
"""
import datasets
import evaluate

_KWARGS = """
Args:
    predictions (list of str): predicted labels.
    references (list of str): true labels.
    labels (list of str, optional): row and column order.
Returns:
    confusion (list of list of int): counts, [true][predicted].
    labels (list of str): the row labels; columns are these plus "other" when needed.
Example:
    >>> cm = evaluate.load("eval/metrics/confusion")
    >>> cm.compute(predictions=["a", "b", "b"], references=["a", "a", "b"], labels=["a", "b"])["confusion"]
    [[1, 1], [0, 1]]
"""
OTHER = "other"


class Confusion(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, labels=None):
        labels = list(labels or sorted(set(references) | set(predictions)))
        unknown = set(references) - set(labels)
        if unknown:
            raise ValueError(f"confusion: references outside labels: {', '.join(sorted(unknown))}.")
        columns = labels + ([OTHER] if set(predictions) - set(labels) else [])
        matrix = [[0] * len(columns) for _ in labels]
        for p, r in zip(predictions, references):
            matrix[labels.index(r)][columns.index(p) if p in labels else len(columns) - 1] += 1
        return {"confusion": matrix, "labels": labels, "columns": columns}
