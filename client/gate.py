"""``cxr thresholds gate``: fit the safety gate (:mod:`cxr.gate`) to the served models, and measure it.

    cxr thresholds gate [--manifest A --manifest B] [--base configs/triage_thresholds.json] [--out F]
        [--report docs/evaluation/gate.json] [--publish]

1. Every study of ``train`` (all manifests) goes through the repository's served graphs once; its gate
   features are kept.
2. ``typicality``: mean and Ledoit-Wolf covariance of those features (a one-class model: it sees no negative).
   ``orientation``: a logistic regression (scikit-learn) of the train CXRs against a spread of the same train
   CXRs rotated 90 degrees, upside down or inverted, a third of them each.
3. Thresholds on ``val``: each detector refuses where at most 0.5 % of every source's real CXRs lie beyond
   (a source of 27 studies: above its highest score), so the two together refuse at most 1 % of any val
   source, and flags where at most 5 % lie beyond (a flagged study is still triaged, at least ``expedited``). ``test`` says whether that holds on new studies.
4. Reported, on ``val`` and ``test``: acceptance per source; on the negatives corpus
   (:mod:`training.data.negatives`, the turned kinds made from ``test`` CXRs): per kind, the share refused,
   flagged and (the failure that matters) triaged ``routine``.

Writes a new thresholds file (version bumped) whose ``quality`` section is the fitted gate; ``--publish``
makes it a release of the repository.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from client.thresholds import SHIPPED, next_version, shared_name
from cxr.gate import NAMES, Detector, Gate, batch_features
from cxr.lungmask import postprocess_mask
from cxr.paths import REPO
from cxr.pipeline import LocalPipeline
from cxr.specs import CLASSIFIER, LUNG_SEGMENTATION
from cxr.triage import Thresholds, gate_decision
from export.release import publish_thresholds
from training.data.manifest import DEFAULT_MANIFEST, KERMANY224_MANIFEST, Record, evenly, read_split, resolve_manifest
from training.data.negatives import REPORTED_APART, corpus, turned_cxrs
from training.evaluation import gate_report
from training.model_card import rewrite_block

REFUSE_QUANTILE, FLAG_QUANTILE = 0.995, 0.95
MAX_REFUSED = 0.01  # of the real CXRs of any val source
TURNED = ("cxr_rotated_90", "cxr_upside_down", "cxr_inverted")


def features_of(pipeline, blobs: list[bytes], batch: int = 8, desc: str = "gate features") -> np.ndarray:
    """``(N, features)``: :func:`cxr.gate.batch_features` of each encoded image, through the served graphs."""
    from tqdm import tqdm

    rows = []
    for start in tqdm(range(0, len(blobs), batch), desc=desc, unit="batch", disable=None):
        seg_in, cls_in = pipeline.prepare(blobs[start : start + batch])
        raw = pipeline.segment(seg_in)
        _, cam = pipeline.classify(cls_in, raw)
        rows.append(batch_features([postprocess_mask(r[0]) for r in raw], raw, cls_in, cam))
    return np.concatenate(rows) if rows else np.zeros((0, len(NAMES)))


def turned_blobs(records: list[Record]) -> list[bytes]:
    """Each record's image turned by one of :data:`TURNED`, in turn."""

    return [data for i, kind in enumerate(TURNED) for _, data in turned_cxrs(records[i :: len(TURNED)], kind)]


def _standardiser(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (floored) standard deviation of the train CXRs' features: both detectors work in these units."""
    return train.mean(0), np.maximum(train.std(0), 1e-6)


def fit_typicality(train: np.ndarray) -> Detector:
    from sklearn.covariance import LedoitWolf

    mean, scale = _standardiser(train)
    z_precision = LedoitWolf().fit((train - mean) / scale).precision_  # on standardised features: one shrinkage fits all
    return Detector("typicality", mean, scale, np.inf, np.inf, precision=z_precision / np.outer(scale, scale))


def fit_orientation(train: np.ndarray, turned: np.ndarray) -> Detector:
    from sklearn.linear_model import LogisticRegression

    mean, scale = _standardiser(train)
    z = (np.vstack([train, turned]) - mean) / scale
    y = np.r_[np.zeros(len(train)), np.ones(len(turned))]
    model = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced").fit(z, y)
    return Detector("orientation", mean, scale, np.inf, np.inf, weights=model.coef_[0], bias=float(model.intercept_[0]))


def limit(scores: np.ndarray, share: float) -> float:
    """The lowest threshold at which at most ``share`` of ``scores`` are at or above it (a score at the
    threshold counts as beyond it, as :meth:`cxr.gate.Gate.judge` decides)."""
    ordered = np.sort(scores)
    allowed = int(np.floor(share * len(ordered) + 1e-9))
    return float(ordered[len(ordered) - allowed]) if allowed else float(np.nextafter(ordered[-1], np.inf))


def with_thresholds(detector: Detector, val: np.ndarray, sources: list[str]) -> Detector:
    """``detector`` with ``refuse_at`` / ``flag_at`` at the highest per-source limit of its val scores, so no
    val source has more than ``1 - REFUSE_QUANTILE`` refused or ``1 - FLAG_QUANTILE`` flagged by it."""
    scores = np.array([detector.score(v) for v in val])
    sources = np.array(sources)
    at = {q: max(limit(scores[sources == s], 1 - q) for s in set(sources.tolist())) for q in (REFUSE_QUANTILE, FLAG_QUANTILE)}
    return Detector(**{**detector.__dict__, "refuse_at": at[REFUSE_QUANTILE], "flag_at": at[FLAG_QUANTILE]})


def fit_gate(train: np.ndarray, turned: np.ndarray, val: np.ndarray, val_sources: list[str]) -> Gate:
    """Both detectors, with thresholds. On val each refuses at most 0.5 % of any source by construction, so
    together at most 1 %; ``test`` (never used here) says whether that holds on new studies."""
    gate = Gate(tuple(with_thresholds(d, val, val_sources) for d in (fit_typicality(train), fit_orientation(train, turned))))
    worst = max(r["refused"] for r in acceptance(gate, val, val_sources).values())
    assert worst <= MAX_REFUSED, worst  # by construction
    return gate


def acceptance(gate: Gate, vectors: np.ndarray, sources: list[str]) -> dict[str, dict]:
    """Per source: :func:`training.evaluation.gate_report` of the gate's decisions (shares accepted, flagged, refused)."""
    decisions = [gate.judge(v).decision for v in vectors]
    return {source: gate_report([d for d, s in zip(decisions, sources) if s == source]) for source in sorted(set(sources))}


def negatives_report(pipeline, test: list[Record]) -> dict[str, dict]:
    """Per negative kind: images, and the share refused, flagged, and triaged ``routine`` (the failure)."""

    by_kind: dict[str, list[tuple[str, bytes]]] = {}
    for kind, name, data in corpus(test):
        by_kind.setdefault(kind, []).append((name, data))
    out = {}
    for kind, items in by_kind.items():
        refused = flagged = routine = 0
        for start in range(0, len(items), 8):
            for res in pipeline.run_batch([d for _, d in items[start : start + 8]]):
                refused += res.refused is not None
                flagged += res.refused is None and gate_decision(res.triage) == "flag"
                routine += res.refused is None and res.triage["priority"] == "routine"
        n = len(items)
        out[kind] = {"n": n, "refused": refused / n, "flagged": flagged / n, "refused_or_flagged": (refused + flagged) / n,
                     "routine": routine / n}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="cxr thresholds gate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", action="append", help="manifest CSV (repeat; default: both shared sets)")
    parser.add_argument("--base", default=str(SHIPPED), help="thresholds file the gate is added to")
    parser.add_argument("--out", help="where the new file goes (default: build/thresholds/<version>.json)")
    parser.add_argument("--repository", default="build/model_repository")
    parser.add_argument("--turned", type=int, default=1500, help="train CXRs turned for the orientation detector")
    parser.add_argument("--report", default=str(REPO / "docs" / "evaluation" / "gate.json"))
    parser.add_argument("--publish", action="store_true", help="publish it as a release of --repository")
    parser.add_argument("--readme", help="also rewrite this file's generated:gate block (README.md)")
    parser.add_argument("--table", metavar="REPORT", help="only rewrite --readme's block from a saved report")
    parser.add_argument("--features", help="an .npz to keep the studies' features in (reused while the repository's "
                        "build, the manifests and --turned are the same: a refit need not run the models again)")
    args = parser.parse_args(argv)
    if args.table:
        return _write_table(json.loads(Path(args.table).read_text()), args.readme or str(REPO / "README.md"))

    manifests = [resolve_manifest(m) for m in (args.manifest or [DEFAULT_MANIFEST, KERMANY224_MANIFEST])]
    pipeline = LocalPipeline(args.repository)
    splits = {split: read_split(manifests, split) for split in ("train", "val", "test")}
    built = json.loads((Path(args.repository) / "build.json").read_text())["models"]
    key = json.dumps([{role: m["weights_sha256"] for role, m in built.items()}, [shared_name(m) for m in manifests],
                      args.turned, list(NAMES)])
    saved = np.load(args.features) if args.features and Path(args.features).exists() else None
    if saved is not None and "key" in saved.files and str(saved["key"]) == key:  # same weights, data and sample
        vectors, turned = {split: saved[split] for split in splits}, saved["turned"]
    else:
        vectors = {split: features_of(pipeline, [r.image.read_bytes() for r in records]) for split, records in splits.items()}
        turned = features_of(pipeline, turned_blobs(evenly(splits["train"], args.turned)))
        if args.features:
            np.savez(args.features, key=key, turned=turned, **vectors)
    sources = {split: [r.cohort for r in records] for split, records in splits.items()}
    gate = fit_gate(vectors["train"], turned, vectors["val"], sources["val"])

    base_raw = json.loads(Path(args.base).read_text())
    version = next_version(base_raw["version"])
    fitted_for = {role: built[role]["weights_sha256"] for role in (LUNG_SEGMENTATION.role, CLASSIFIER.role)}
    raw = {**base_raw, "version": version, "quality": {**gate.to_dict(), "fitted_for": fitted_for},
           "description": base_raw.get("description", "") + f" Safety gate fitted by `cxr thresholds gate` ({version})."}
    pipeline.thresholds = Thresholds.from_dict(raw)
    report = {"version": version, "manifests": [shared_name(m) for m in manifests],
              "n": {split: len(records) for split, records in splits.items()}, "turned_for_fit": len(turned),
              "thresholds": {d.name: {"flag_at": d.flag_at, "refuse_at": d.refuse_at} for d in gate.detectors},
              "real": {split: acceptance(gate, vectors[split], sources[split]) for split in ("val", "test")},
              "negatives": negatives_report(pipeline, splits["test"]), "reported_apart": list(REPORTED_APART)}
    out = Path(args.out or REPO / "build" / "thresholds" / f"{version}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw, indent=2) + "\n")
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"wrote {out} (version {version}) and {args.report}")
    if args.readme:
        _write_table(report, args.readme)
    if args.publish:
        print(f"release {publish_thresholds(args.repository, out)} published (cxr models promote)")
    return report


def markdown(report: dict) -> str:
    """The README's ``gate`` block: acceptance of real CXRs per source, and the negatives per kind."""
    lines = ["<!-- generated:gate -->",
             f"Generated from `{Path(REPO / 'docs' / 'evaluation' / 'gate.json').relative_to(REPO)}` "
             f"(`cxr thresholds gate`, release {report['version']}): thresholds "
             + ", ".join(f"{n} flag {t['flag_at']:.2f} / refuse {t['refuse_at']:.2f}" for n, t in report["thresholds"].items())
             + ".", "", "| real CXRs | " + " | ".join(f"{split} accepted (flagged)" for split in report["real"]) + " |",
             "|---|" + "---|" * len(report["real"])]
    for source in next(iter(report["real"].values())):
        lines.append(f"| `{source}` | " + " | ".join(
            f"**{r[source]['accepted']:.3f}** ({r[source]['flagged']:.3f}), n={r[source]['n']}" for r in report["real"].values()) + " |")
    lines += ["", "| negatives (kind) | n | refused | refused or flagged | triaged `routine` |", "|---|---|---|---|---|"]
    for kind, r in report["negatives"].items():
        apart = " (apart: still a frontal CXR)" if kind in report["reported_apart"] else ""
        lines.append(f"| {kind}{apart} | {r['n']} | {r['refused']:.3f} | **{r['refused_or_flagged']:.3f}** | {r['routine']:.3f} |")
    return "\n".join([*lines, "<!-- /generated:gate -->"])


def _write_table(report: dict, readme: str) -> dict:
    rewrite_block(Path(readme), "gate", markdown(report))
    print(f"{readme}: gate block rewritten")
    return report


def print_report(report: dict) -> None:
    for name, t in report["thresholds"].items():
        print(f"{name}: flag at {t['flag_at']:.2f}, refuse at {t['refuse_at']:.2f}")
    for split, by_source in report["real"].items():
        print(f"real CXRs, {split}: " + "  ".join(
            f"{s} accepted {r['accepted']:.3f} (flagged {r['flagged']:.3f}, n={r['n']})" for s, r in by_source.items()))
    print("negatives (never fitted on, except the three turned-CXR kinds, made from other (train) images):")
    for kind, r in report["negatives"].items():
        apart = " (reported apart: still a frontal CXR)" if kind in report["reported_apart"] else ""
        print(f"  {kind:<20} n={r['n']:<3} refused {r['refused']:.2f}  refused or flagged {r['refused_or_flagged']:.2f}  "
              f"routine {r['routine']:.2f}{apart}")


if __name__ == "__main__":
    main()
