"""Label volumes out: the .npz every later step reads, NIfTI for ITK-SNAP and 3D Slicer.

Both are written to a temporary file beside the target and moved into place, so an interrupted
run leaves the old file or none, never half of one.

``<name>.npz`` (``np.load(path)``):

- ``labels``: uint8 [N, H, W] class indices (uint16 beyond 256 classes), frame order of the
  Volume (frame 0 the most superior B-scan); N = 1 for a single image;
- ``spacing_um``: float64 [axial, lateral, bscan] in micrometres, NaN where unknown;
- ``laterality``: 'OD', 'OS' or '' (a 0-d string array: ``str(z["laterality"])``);
- ``class_names``: string array, background first.
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from sam2oct.data.volumes.volume import VolumeError

NIFTI_INTENT_LABEL = "label"


def label_dtype(num_classes: int):
    return np.uint8 if num_classes <= 256 else np.uint16


@contextmanager
def atomic_path(path: Path, suffix: str = ""):
    """A temporary path beside ``path`` (ending in ``suffix``, for writers that choose the format
    by the name); moved onto ``path`` when the block ends without error, else removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial" + suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_labels_npz(path, labels: np.ndarray, *, spacing_um, laterality: str, class_names) -> Path:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be [N, H, W], got {labels.shape}")
    labels = labels.astype(label_dtype(len(class_names)), copy=False)
    path = Path(path)
    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez_compressed(f, labels=labels, spacing_um=np.asarray(spacing_um, dtype=np.float64),
                                laterality=np.asarray(laterality, dtype=str),
                                class_names=np.asarray(list(class_names), dtype=str))
    return path


def nifti_zooms_mm(spacing_um, n_bscans: int) -> tuple:
    """(lateral, axial, bscan) voxel sizes in mm for the NIfTI axes; refuses unknown spacing."""
    axial, lateral, between = (float(s) for s in spacing_um)
    if math.isnan(axial) or math.isnan(lateral) or axial <= 0 or lateral <= 0:
        raise VolumeError("the NIfTI file needs the axial and lateral spacing, which this volume does not "
                          "record; give it as AXIAL,LATERAL,BSCAN micrometres")
    if math.isnan(between) or between <= 0:
        if n_bscans > 1:
            raise VolumeError("the NIfTI file needs the distance between B-scans, which this volume does not "
                              "record; give it as AXIAL,LATERAL,BSCAN micrometres")
        between = lateral  # one B-scan: any positive thickness displays it
    return lateral / 1000, axial / 1000, between / 1000


def write_nifti(path, labels: np.ndarray, *, spacing_um) -> Path:
    """NIfTI-1 label image: voxel (i, j, k) = (column, row, B-scan) of ``labels`` [N, H, W],
    voxel sizes (lateral, axial, between B-scans) in mm, intent 'label'. The affine is the
    diagonal of those sizes: the viewers' axes are the B-scan's columns, rows and frame index,
    not anatomical directions (the scanner files give no patient frame)."""
    import nibabel as nib

    labels = np.asarray(labels)
    zooms = nifti_zooms_mm(spacing_um, labels.shape[0])
    data = np.ascontiguousarray(np.transpose(labels, (2, 1, 0)))  # [W, H, N]
    img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    img.header.set_xyzt_units("mm")
    img.header.set_intent(NIFTI_INTENT_LABEL)
    img.header.set_data_dtype(data.dtype)
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    with atomic_path(path, suffix) as tmp:  # nibabel compresses by the name's .gz
        nib.save(img, tmp)
    return path
