"""``cxr thresholds fit``: choose the triage thresholds on labelled data so that named sensitivities hold.

    cxr thresholds fit --manifest A [--manifest B] [--split val] --sensitivity abnormal=0.95 \\
        --sensitivity covid=0.95 [--lower-bound abnormal] [--base configs/triage_thresholds.json] [--out F] \\
        [--publish]

Targets: ``abnormal=S`` (every study whose label is not ``normal`` gets at least ``expedited`` with
sensitivity >= S; fitted: ``abnormal_expedited``, the only expedited rule after the fit, so that every normal
study below it stays ``routine``) and ``LABEL=S`` (studies of that label get ``urgent`` with sensitivity >= S;
fitted: ``urgent[LABEL]``). Each threshold is the *largest* that meets its target on the fitting data
(fewest studies moved up); ``--lower-bound TARGET`` makes the lower end of that target's patient-bootstrap 95 %
interval meet it instead of the point estimate (the margin then grows as the fitting data shrinks: a point
estimate fitted at the edge misses on new data about half the time). Untrained labels
(:data:`cxr.labels.UNTRAINED`) are dropped from the thresholds.

Every study is scored once through the repository's served graphs (stage-1 probabilities, lung fraction and the
cascade's stage-2 covid probability, the safety gate's features); priorities under candidate thresholds are
then the served decision itself (:func:`cxr.triage.triage`, the release's gate (a refused study counts as a
miss, a flagged one at least ``expedited``), plus stage 2 where :func:`cxr.triage.needs_stage2` selects it). Writes a
new thresholds file (version bumped; targets, fitted numbers and the data recorded in ``fitted``) and prints
sensitivity, specificity and the share of studies per priority on the fitting data and on ``test``, with
patient-bootstrap 95 % intervals. ``--publish`` makes it a release of the repository (``cxr models promote``).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cxr.cascade import stage2_input
from cxr.gate import batch_features
from cxr.labels import LABELS, UNTRAINED
from cxr.lungmask import lung_fraction, postprocess_mask
from cxr.paths import REPO, THRESHOLDS
from cxr.pipeline import LocalPipeline
from cxr.release_record import serving_pins
from cxr.triage import PRIORITIES, Thresholds, needs_stage2, triage, with_stage2
from export.release import publish_thresholds
from training.data.manifest import DATA_ROOT, DEFAULT_MANIFEST, Record, read_split, resolve_manifest
from training.metrics import group_bootstrap, group_draws, proportion_lower_bound

SHIPPED = THRESHOLDS


@dataclass
class Scored:
    """What the served pipeline computes for each study of a split, before thresholds."""

    records: list[Record]
    probabilities: np.ndarray  # (N, labels), calibrated stage 1
    lung_fraction: np.ndarray  # (N,)
    covid_stage2: np.ndarray  # (N,), stage 2 run on every study (used only where the thresholds call for it)
    gate_features: np.ndarray | None = None  # (N, features) of the safety gate (cxr.gate.study_features)


def score(manifests: list[Path], split: str, repository: str | Path, batch: int = 8) -> Scored:
    records = read_split(manifests, split)
    pipeline = LocalPipeline(repository)
    probs, fractions, covid, features = [], [], [], []
    for start in range(0, len(records), batch):
        seg_in, cls_in = pipeline.prepare([r.image.read_bytes() for r in records[start : start + batch]])
        raw = pipeline.segment(seg_in)
        masks = [postprocess_mask(m[0]) for m in raw]
        p, cam = pipeline.classify(cls_in, raw)
        probs.append(p)
        fractions.extend(lung_fraction(m) for m in masks)
        features.append(batch_features(masks, raw, cls_in, cam))
        covid.append(pipeline.stage2(np.stack([stage2_input(c, m) for c, m in zip(cls_in, masks)])))
    return Scored(records, np.concatenate(probs), np.array(fractions), np.concatenate(covid), np.concatenate(features))


REFUSED = len(PRIORITIES)  # the level of a study the safety gate refuses: below every priority (a miss)


def priorities(scored: Scored, thresholds: Thresholds) -> np.ndarray:
    """The served priority of every study under ``thresholds`` (index into :data:`cxr.triage.PRIORITIES`, or
    :data:`REFUSED`), the release's safety gate included."""
    gate = thresholds.gate
    if gate is not None and scored.gate_features is None:
        raise ValueError("the thresholds have a safety gate: score the studies with their gate features")
    out = []
    for i, (p, fraction, covid) in enumerate(zip(scored.probabilities, scored.lung_fraction, scored.covid_stage2)):
        verdict = gate.judge(scored.gate_features[i]) if gate is not None else None
        if verdict is not None and verdict.decision == "refuse":
            out.append(REFUSED)
            continue
        result = triage(p, float(fraction), thresholds, verdict)
        if needs_stage2(p, thresholds):
            result = with_stage2(result, float(covid), thresholds)
        out.append(PRIORITIES.index(result.priority))
    return np.array(out)


def _positives(scored: Scored, target: str) -> np.ndarray:
    labels = np.array([r.label for r in scored.records])
    return labels != "normal" if target == "abnormal" else labels == target


def _at_least(target: str) -> int:
    return PRIORITIES.index("expedited" if target == "abnormal" else "urgent")


def _with(thresholds: Thresholds, target: str, value: float) -> Thresholds:
    if target == "abnormal":
        return replace(thresholds, abnormal_expedited=value)
    return replace(thresholds, urgent={**thresholds.urgent, target: value})


def fit_one(scored: Scored, thresholds: Thresholds, target: str, sensitivity: float, lower_bound: bool = False,
            resamples: int = 1000, seed: int = 0) -> float:
    """The largest threshold for ``target`` at which its sensitivity on ``scored`` is still >= ``sensitivity``;
    with ``lower_bound``, at which the lower end of its patient-bootstrap 95 % interval (the interval
    :func:`operating_report` prints, same ``resamples`` and ``seed``) is: a target that holds with confidence on
    the fitting data rather than on its point estimate, whose margin is as wide as the data is small."""
    positive = _positives(scored, target)
    if not positive.any():
        raise ValueError(f"no {target} studies in the fitting data: cannot fit its sensitivity")
    score = 1 - scored.probabilities[:, 0] if target == "abnormal" else scored.probabilities[:, LABELS.index(target)]
    candidates = np.unique(score[positive])  # ascending; sensitivity only falls as the threshold rises
    draws = group_draws(_patients(scored), resamples, seed) if lower_bound else None

    def meets(value: float) -> bool:
        hits = priorities(scored, _with(thresholds, target, value)) <= _at_least(target)
        if draws is None:
            return hits[positive].mean() >= sensitivity
        return proportion_lower_bound(hits, positive, *draws) >= sensitivity  # the same draws at every candidate

    lo, hi = 0, len(candidates) - 1  # binary search for the last candidate that still meets the target
    if not meets(float(candidates[0])):
        bound = "the lower end of its 95 % interval" if lower_bound else "sensitivity"
        raise ValueError(f"{target}: {bound} >= {sensitivity} is out of reach even at threshold {candidates[0]:.4f}"
                         f" ({int(positive.sum())} {target} studies)")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if meets(float(candidates[mid])) else (lo, mid - 1)
    best = float(candidates[lo])
    return float(np.floor(best * 1e4) / 1e4)  # rounded down: the printed threshold still meets the target


def _patients(scored: Scored) -> list[str]:
    return [r.patient_id or str(r.image) for r in scored.records]


def operating_report(scored: Scored, thresholds: Thresholds, targets: dict[str, float], resamples: int = 1000,
                     seed: int = 0) -> dict:
    """Per target: sensitivity and specificity at its level; share of all studies and of normal studies per
    priority; each with a patient-bootstrap 95 % interval."""
    level = priorities(scored, thresholds)
    normal = _positives(scored, "normal")

    def numbers(idx: np.ndarray) -> dict[str, float]:
        out = {}
        for target in targets:
            positive, hit = _positives(scored, target)[idx], level[idx] <= _at_least(target)
            out[f"{target}_sensitivity"] = float(hit[positive].mean()) if positive.any() else np.nan
            out[f"{target}_specificity"] = float((~hit[~positive]).mean()) if (~positive).any() else np.nan
        for k, name in enumerate((*PRIORITIES, "refused")):
            out[f"share_{name}"] = float((level[idx] == k).mean())
            out[f"normal_{name}"] = float((level[idx][normal[idx]] == k).mean()) if normal[idx].any() else np.nan
        return out

    intervals = group_bootstrap(_patients(scored), numbers, resamples, seed)
    return {key: {"value": value, "ci95": intervals.get(key)} for key, value in numbers(np.arange(len(level))).items()} | {
        "n": len(level), "normal_n": int(normal.sum())}


def next_version(version: str, today: str | None = None) -> str:
    """``YYYY-MM-DD.N``: today's date, N one more than ``version``'s if that is from today, else 1."""
    today = today or time.strftime("%Y-%m-%d")
    date, _, n = version.partition(".")
    return f"{today}.{int(n) + 1 if date == today and n.isdigit() else 1}"


def fit(base: Thresholds, scored: Scored, targets: dict[str, float], lower_bound: frozenset[str] = frozenset(),
        resamples: int = 1000) -> Thresholds:
    """``base`` with untrained labels dropped, the expedited rules reduced to ``abnormal_expedited`` when that is
    a target, and each target's threshold fitted (on its interval's lower end for the targets in ``lower_bound``):
    the urgent ones first (an urgent study is also "expedited or higher", so they move the abnormal target;
    ``abnormal_expedited`` moves no urgent one), then abnormal."""
    fitted = replace(base, urgent={k: v for k, v in base.urgent.items() if k not in UNTRAINED},
                     expedited={} if "abnormal" in targets else
                     {k: v for k, v in base.expedited.items() if k not in UNTRAINED})
    for target in sorted(targets, key=lambda t: t == "abnormal"):
        value = fit_one(scored, fitted, target, targets[target], target in lower_bound, resamples)
        fitted = _with(fitted, target, value)
    return fitted


def shared_name(manifest: Path) -> str:
    """A manifest as recorded: relative to the shared data folder when it lies there (portable), else as is."""

    try:
        return str(manifest.resolve().relative_to(DATA_ROOT.resolve()))
    except ValueError:
        return str(manifest)


def parse_targets(items: list[str]) -> dict[str, float]:
    targets = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in ("abnormal", *LABELS) or name in ("normal", *UNTRAINED):
            raise ValueError(f"--sensitivity {item!r}: expected abnormal=S or LABEL=S with LABEL a trained abnormal "
                             f"label ({', '.join(l for l in LABELS if l != 'normal' and l not in UNTRAINED)})")
        targets[name] = float(value)
        if not 0 < targets[name] <= 1:
            raise ValueError(f"--sensitivity {item!r}: S must be in (0, 1]")
    return targets


def print_report(title: str, report: dict, targets: dict[str, float],
                 lower_bound: frozenset[str] = frozenset()) -> None:
    def cell(key: str) -> str:
        v = report[key]
        return f"{v['value']:.3f}" + (f" [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" if v["ci95"] else "")

    print(f"{title} ({report['n']} studies, {report['normal_n']} normal; 95 % patient-bootstrap intervals)")
    for target, goal in targets.items():
        level = "expedited or higher" if target == "abnormal" else "urgent"
        print(f"  {target:<9} -> {level:<19} sensitivity {cell(f'{target}_sensitivity')} (target {goal:.2f}"
              f"{', on its lower end' if target in lower_bound else ''})  specificity {cell(f'{target}_specificity')}")
    print("  share of studies: " + "  ".join(f"{p} {cell(f'share_{p}')}" for p in (*PRIORITIES, "refused")))
    print("  normal studies:   " + "  ".join(f"{p} {cell(f'normal_{p}')}" for p in (*PRIORITIES, "refused")))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="cxr thresholds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("gate", add_help=False, help="fit the safety gate for the served models (cxr thresholds gate --help; "
                                                "client.gate)")
    fit_cmd = sub.add_parser("fit", help="fit thresholds to sensitivity targets on labelled data")
    fit_cmd.add_argument("--manifest", action="append", help="manifest CSV (repeat; default: the shared cxr set)")
    fit_cmd.add_argument("--split", default="val", help="the split the thresholds are fitted on")
    fit_cmd.add_argument("--report-split", default="test", help="also report on this split ('none': skip)")
    fit_cmd.add_argument("--sensitivity", action="append", required=True, help="abnormal=S or LABEL=S (repeat)")
    fit_cmd.add_argument("--lower-bound", action="append", default=[], metavar="TARGET",
                         help="fit TARGET (abnormal or a label of --sensitivity; repeat) so that the lower end of its "
                              "95 %% patient-bootstrap interval on the fitting data meets S, not the point estimate")
    fit_cmd.add_argument("--base", default=str(SHIPPED), help="thresholds file the fit starts from")
    fit_cmd.add_argument("--out", help="where the fitted file goes (default: build/thresholds/<version>.json)")
    fit_cmd.add_argument("--repository", default="build/model_repository")
    fit_cmd.add_argument("--resamples", type=int, default=1000)
    fit_cmd.add_argument("--publish", action="store_true", help="publish it as a release of --repository")
    args = parser.parse_args(argv)

    targets = parse_targets(args.sensitivity)
    lower_bound = frozenset(args.lower_bound)
    if lower_bound and args.resamples < 1:
        parser.error("--lower-bound needs the bootstrap: --resamples >= 1")
    if lower_bound - set(targets):
        parser.error(f"--lower-bound {', '.join(sorted(lower_bound - set(targets)))}: not a --sensitivity target "
                     f"({', '.join(targets)})")
    manifests = [resolve_manifest(m) for m in (args.manifest or [DEFAULT_MANIFEST])]
    base_raw = json.loads(Path(args.base).read_text())
    fitting = score(manifests, args.split, args.repository)
    fitted = fit(Thresholds.from_dict(base_raw), fitting, targets, lower_bound, args.resamples)
    version = next_version(base_raw["version"])
    reports = {args.split: operating_report(fitting, fitted, targets, args.resamples)}
    if args.report_split != "none":
        reports[args.report_split] = operating_report(score(manifests, args.report_split, args.repository), fitted,
                                                      targets, args.resamples)

    raw = {**base_raw, "version": version, "urgent": fitted.urgent, "expedited": fitted.expedited,
           "abnormal_expedited": fitted.abnormal_expedited,
           "description": base_raw.get("description", "") + f" Fitted by `cxr thresholds fit` ({version}).",
           "fitted": {"targets": targets, "lower_bound": sorted(lower_bound), "from": base_raw["version"],
                      "split": args.split,
                      "manifests": [shared_name(m) for m in manifests], "n": len(fitting.records),
                      "repository_pins": serving_pins(args.repository),
                      "results": {split: {k: v for k, v in r.items()} for split, r in reports.items()}}}
    out = Path(args.out or REPO / "build" / "thresholds" / f"{version}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw, indent=2) + "\n")
    Thresholds.load(out)  # the written file is valid
    for split, report in reports.items():
        print_report(f"{split}{' (fitted here)' if split == args.split else ''}", report, targets, lower_bound)
    print(f"fitted: abnormal_expedited {fitted.abnormal_expedited}, urgent {fitted.urgent}, expedited {fitted.expedited}")
    print(f"wrote {out} (version {version})")
    if args.publish:
        print(f"release {publish_thresholds(args.repository, out)} published (cxr models promote)")
    return raw


if __name__ == "__main__":
    main()
