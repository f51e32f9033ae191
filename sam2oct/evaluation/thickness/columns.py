"""Thickness of each layer in every A-scan: its pixel count in that column x the axial spacing.

``retina`` counts every non-background class except the choroid (which lies below Bruch's
membrane). For the released layer sets that is the retina from the ILM to Bruch's membrane (the
outer edge of the RPE): NR206 NFL..RPE, MGU RNFL..RPE (plus Disc, found only at the optic
nerve head). Devices define total retinal thickness differently: Spectralis reports ILM to BM,
Cirrus ILM to the RPE's inner edge, so compare totals only within one definition.
"""

from __future__ import annotations

import numpy as np

from sam2oct.evaluation.thickness.geometry import ThicknessError

RETINA = "retina"
_OUTSIDE_RETINA = {"background", "choroid"}  # by name (case-insensitive); index 0 always


def retina_classes(class_names) -> tuple:
    """Indices of the classes summed into ``retina``."""
    return tuple(i for i, name in enumerate(class_names)
                 if i > 0 and str(name).strip().lower() not in _OUTSIDE_RETINA)


def definition(class_names) -> str:
    """The output's ``definition``: what a layer's and the retina's thickness are."""
    inside = [class_names[i] for i in retina_classes(class_names)]
    left_out = [class_names[i] for i in range(1, len(class_names)) if i not in retina_classes(class_names)]
    text = ("thickness per A-scan = pixels of the class in that column x axial spacing; "
            f"retina = the sum over {', '.join(inside) or 'no class'}")
    text += f" (every non-background class except {', '.join(left_out)})" if left_out else \
        " (every non-background class)"
    text += ("; for the released layer sets that runs from the ILM to Bruch's membrane (outer edge "
             "of the RPE). Devices differ: Spectralis reports ILM-BM, Cirrus ILM-RPE; compare totals "
             "within one definition only")
    return text


def check_labels(labels, class_names) -> np.ndarray:
    """[N, H, W] integer labels whose values index class_names; a single B-scan becomes N=1."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3 or 0 in labels.shape:
        raise ThicknessError(f"labels must be a [N, H, W] volume of class indices, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ThicknessError(f"labels must hold integer class indices, got {labels.dtype}")
    names = [str(n) for n in class_names]
    if len(names) < 2:
        raise ThicknessError("class_names must name the background and at least one layer")
    if len(set(names)) != len(names):
        raise ThicknessError(f"class_names repeat a name: {names}")
    if RETINA in names:
        raise ThicknessError(f"a class may not be named {RETINA!r}: that name is the total")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= len(names):
        raise ThicknessError(f"labels hold class {low if low < 0 else high}, but only "
                             f"{len(names)} classes are named (0..{len(names) - 1})")
    return labels


def column_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, N, W] int: pixels of each class in each A-scan (one B-scan at a time, one bincount each)."""
    n, h, w = labels.shape
    counts = np.empty((num_classes, n, w), dtype=np.int32)
    cols = np.arange(w, dtype=np.int64)[None, :]
    for i in range(n):
        flat = labels[i].astype(np.int64) * w + cols
        counts[:, i, :] = np.bincount(flat.ravel(), minlength=num_classes * w).reshape(num_classes, w)
    return counts


def thickness_maps(labels, class_names, axial_um: float) -> dict:
    """{layer name: [N, W] µm, ..., 'retina': [N, W] µm}, layers in class order."""
    labels = check_labels(labels, class_names)
    counts = column_counts(labels, len(class_names))
    maps = {str(name): counts[i] * float(axial_um) for i, name in enumerate(class_names) if i > 0}
    maps[RETINA] = counts[list(retina_classes(class_names))].sum(axis=0) * float(axial_um)
    return maps
