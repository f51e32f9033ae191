"""How well a model's label maps match annotated B-scans: IoU, Dice and layer-boundary error.

- IoU and Dice per class are *pooled* over the dataset: intersections, unions and pixel counts
  are summed over all images before dividing. A class absent from both truth and prediction
  (everywhere, or in that image for the per-image figures) has no score: ``None`` (JSON null),
  and is left out of ``mean_iou`` / ``mean_dice``, which average the layer classes (background
  excluded).
- Boundary error: in each A-scan (image column) a layer begins at its topmost pixel. Where truth
  and prediction both have the layer in a column, the absolute row difference is one sample;
  ``boundary_mae_px`` averages them per boundary (named after the layer it begins) and over all
  boundaries and columns together, and counts the columns where the truth has the layer but the
  prediction does not (``missing``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sam2oct.data.samples import Dataset

__all__ = ["score", "format_table", "compare", "image_counts", "counts_report"]


def image_counts(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    """The sums every figure is made of, for one image (add them up to pool images)."""
    truth = np.asarray(truth, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    both = np.bincount(truth[truth == pred], minlength=n_classes)[:n_classes]
    in_truth = np.bincount(truth.ravel(), minlength=n_classes)[:n_classes]
    in_pred = np.bincount(pred.ravel(), minlength=n_classes)[:n_classes]
    abs_err = np.zeros(n_classes)
    compared = np.zeros(n_classes, dtype=np.int64)
    missing = np.zeros(n_classes, dtype=np.int64)
    for k in range(1, n_classes):
        t_top, t_has = _tops(truth == k)
        p_top, p_has = _tops(pred == k)
        common = t_has & p_has
        abs_err[k] = np.abs(t_top[common] - p_top[common]).sum()
        compared[k] = common.sum()
        missing[k] = (t_has & ~p_has).sum()
    return {"intersection": both, "truth": in_truth, "pred": in_pred,
            "abs_err": abs_err, "compared": compared, "missing": missing}


def _tops(mask):
    """Row of the topmost set pixel in each column, and whether the column has one."""
    has = mask.any(axis=0)
    return np.argmax(mask, axis=0), has


def counts_report(counts: dict, class_names) -> dict:
    """IoU, Dice and boundary figures from (summed) :func:`image_counts`."""
    inter, truth, pred = counts["intersection"], counts["truth"], counts["pred"]
    union = truth + pred - inter
    per_class = {}
    for k, name in enumerate(class_names):
        if union[k] == 0:
            per_class[name] = {"iou": None, "dice": None}
        else:
            per_class[name] = {"iou": float(inter[k] / union[k]), "dice": float(2 * inter[k] / (truth[k] + pred[k]))}
    layers = [per_class[n] for n in class_names[1:] if per_class[n]["iou"] is not None]
    per_boundary = {}
    for k, name in enumerate(class_names[1:], 1):
        n = int(counts["compared"][k])
        per_boundary[name] = {"mae": float(counts["abs_err"][k] / n) if n else None,
                              "columns": n, "missing": int(counts["missing"][k])}
    total = int(counts["compared"].sum())
    return {
        "classes": list(class_names),
        "per_class": per_class,
        "mean_iou": float(np.mean([c["iou"] for c in layers])) if layers else None,
        "mean_dice": float(np.mean([c["dice"] for c in layers])) if layers else None,
        "boundary_mae_px": {
            "overall": float(counts["abs_err"].sum() / total) if total else None,
            "columns": total,
            "missing": int(counts["missing"].sum()),
            "per_boundary": per_boundary,
        },
    }


def score(dataset: Dataset, predict: Callable[[np.ndarray], np.ndarray], progress=None) -> dict:
    """Run ``predict`` (grey frame -> label map of the same shape) on every sample and score it.

    Returns ``{images, classes, per_class: {name: {iou, dice}}, mean_iou, mean_dice,
    boundary_mae_px: {overall, columns, missing, per_boundary: {layer: {mae, columns, missing}}},
    per_image: [{name, volume, per_class, mean_iou, mean_dice, boundary_mae_px}]}``.
    ``progress(i, n, sample)``, if given, is called after each image.
    """
    names = tuple(dataset.class_names)
    k = len(names)
    total = None
    per_image = []
    for sample in dataset.samples:
        pred = np.asarray(predict(sample.gray))
        if pred.shape != sample.labels.shape:
            raise ValueError(f"{sample.name}: prediction is {pred.shape}, the labels {sample.labels.shape}")
        if pred.dtype.kind not in "iu" or (pred.size and (pred.min() < 0 or pred.max() >= k)):
            raise ValueError(f"{sample.name}: prediction must hold class indices 0..{k - 1}")
        counts = image_counts(sample.labels, pred, k)
        total = counts if total is None else {key: total[key] + counts[key] for key in total}
        rep = counts_report(counts, names)
        del rep["classes"]
        per_image.append({"name": sample.name, "volume": sample.volume, **rep})
        if progress is not None:
            progress(len(per_image), len(dataset.samples), sample)
    if total is None:
        raise ValueError("the dataset has no samples")
    return {"images": len(dataset.samples), **counts_report(total, names), "per_image": per_image}


def compare(reports: dict) -> dict:
    """Several reports of one dataset (by preprocessing) side by side, and which scores best.

    Best = highest ``mean_iou``, then ``mean_dice``; ``"tie"`` when equal."""
    key = {name: (r["mean_iou"] if r["mean_iou"] is not None else -1.0,
                  r["mean_dice"] if r["mean_dice"] is not None else -1.0) for name, r in reports.items()}
    best = max(key.values())
    winners = [name for name, v in key.items() if v == best]
    first = next(iter(reports.values()))
    return {"images": first["images"], "classes": first["classes"], "by_preprocess": reports,
            "better": winners[0] if len(winners) == 1 else "tie", "better_by": "mean_iou, then mean_dice"}


def _fmt(v, digits=4):
    return "-" if v is None else f"{v:.{digits}f}"


def format_table(report: dict) -> str:
    """A readable table of a :func:`score` report, or of a :func:`compare` one (columns side by side)."""
    reports = report.get("by_preprocess") or {"": report}
    heads = list(reports)
    first = next(iter(reports.values()))
    names = first["classes"]
    width = max(len("mean (layers)"), max(len(n) for n in names)) + 2
    col = 16
    lines = [f"{report['images']} images"]
    if len(heads) > 1 or heads[0]:
        lines.append(" " * width + "".join(f"{h:<{col}}" for h in heads))
    lines.append(f"{'class':<{width}}" + f"{'IoU':<8}{'Dice':<8}" * len(heads))
    for name in names:
        row = "".join(f"{_fmt(r['per_class'][name]['iou']):<8}{_fmt(r['per_class'][name]['dice']):<8}"
                      for r in reports.values())
        lines.append(f"{name:<{width}}{row}")
    lines.append(f"{'mean (layers)':<{width}}" + "".join(
        f"{_fmt(r['mean_iou']):<8}{_fmt(r['mean_dice']):<8}" for r in reports.values()))
    lines.append("")
    lines.append(f"{'boundary':<{width}}" + f"{'MAE px':<8}{'missing':<8}" * len(heads))
    for name in names[1:]:
        row = "".join(f"{_fmt(r['boundary_mae_px']['per_boundary'][name]['mae'], 2):<8}"
                      f"{r['boundary_mae_px']['per_boundary'][name]['missing']:<8}" for r in reports.values())
        lines.append(f"{name:<{width}}{row}")
    lines.append(f"{'all':<{width}}" + "".join(
        f"{_fmt(r['boundary_mae_px']['overall'], 2):<8}{r['boundary_mae_px']['missing']:<8}" for r in reports.values()))
    if "better" in report:
        lines.append("")
        lines.append(f"better: {report['better']} (by {report['better_by']})")
    lines.append("(- : class absent from truth and prediction; MAE in pixels over columns where both have the layer)")
    return "\n".join(lines)
