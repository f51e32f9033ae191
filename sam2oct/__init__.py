"""sam2-oct: retinal layer segmentation of OCT B-scans with the SAM2-OCT models, for CVAT."""

__version__ = "0.1.0"
