"""Scanner volumes in: device files become :class:`~sam2oct.data.volumes.volume.Volume` objects.

``sam2oct.data.volumes.reader.read_volume(path)`` picks the reader by magic bytes (then suffix);
docs/volumes.md lists the formats, their display transforms and frame orders.
"""
