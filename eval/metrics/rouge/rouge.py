"""ROUGE-1 and ROUGE-L F-measures (rouge-score package, Porter stemming), averaged over
pairs and returned per pair too. A local module so it loads offline."""
import datasets
import evaluate
from rouge_score import rouge_scorer

_KWARGS = """
Args:
    predictions (list of str): generated answers.
    references (list of str): reference answers.
Returns:
    rouge1, rougeL (float): mean F-measures in [0, 1];
    rouge1_per_pair, rougeL_per_pair (list of float).
Example:
    >>> rouge = evaluate.load("eval/metrics/rouge")
    >>> rouge.compute(predictions=["the cat sat"], references=["the cat sat"])["rouge1"]
    1.0
"""
TYPES = ("rouge1", "rougeL")


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="Lin, ROUGE, 2004", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        if not references:
            raise ValueError("rouge: no pairs to score.")
        scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=True)
        pairs = [scorer.score(r, p) for p, r in zip(predictions, references)]  # score(target, prediction)
        out = {}
        for kind in TYPES:
            values = [s[kind].fmeasure for s in pairs]
            out[kind], out[f"{kind}_per_pair"] = sum(values) / len(values), values
        return out
