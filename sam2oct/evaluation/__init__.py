"""Measuring segmentations: scores against annotations and layer thickness (thickness/)."""
