"""The model card's classifier block is written from `cxr evaluate --json` output, nothing else touched."""
from __future__ import annotations

import numpy as np


def test_classifier_block_is_replaced_from_an_evaluation(tmp_path):
    from cxr.labels import LABELS
    from training.metrics import bootstrap_intervals, classification_report, headline
    from training.model_card import BEGIN, END, rewrite

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 80)
    p = rng.dirichlet(np.ones(5), 80)
    p[np.arange(80), y] += 1
    p /= p.sum(1, keepdims=True)
    report = classification_report(y, p, LABELS) | headline(y, p)
    report["intervals"] = bootstrap_intervals(y, p, np.arange(80).astype(str), resamples=50)
    evaluation = {"via": "onnxruntime x", "split": "test", "classification": report, "by_cohort": {"kermany": report}}
    card = tmp_path / "card.md"
    card.write_text(f"# Card\nkept above\n{BEGIN}\nold numbers\n{END}\nkept below\n")
    rewrite(card, evaluation)
    text = card.read_text()
    assert "old numbers" not in text and text.startswith("# Card\nkept above\n") and text.endswith("kept below\n")
    assert f"| pooled | 80 | **{report['accuracy']:.3f}** [{report['intervals']['accuracy'][0]:.3f}," in text
    assert "| cohort `kermany` | 80 |" in text and str(report["confusion_matrix"]) in text
