"""sam2-oct: retinal layer segmentation of OCT B-scans with the SAM2-OCT models, for CVAT.

    from sam2oct import Segmenter
    segmenter = Segmenter.from_pretrained("nr206")
    result = segmenter.segment("bscan.png")

``Segmenter`` is imported on first use, so ``import sam2oct`` (and the command line's quick
errors) does not load torch.
"""

__version__ = "0.1.0"
__all__ = ["Segmentation", "Segmenter", "__version__"]


def __getattr__(name):
    if name in ("Segmenter", "Segmentation"):
        from sam2oct import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'sam2oct' has no attribute {name!r}")
