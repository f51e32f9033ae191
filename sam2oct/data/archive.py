"""Exports as a read-only tree of members: a zip read member by member in memory, or a folder,
with caps on member count and bytes; nothing is ever extracted or written."""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sam2oct.data.samples import DatasetError

DEFAULT_MAX_MEMBER_BYTES = 512 * 2**20
DEFAULT_MAX_TOTAL_BYTES = 8 * 2**30
DEFAULT_MAX_MEMBERS = 200_000
READ_CHUNK = 1 << 20


@dataclass
class Limits:
    member_bytes: int
    total_bytes: int
    members: int
    read: int = 0


def check_member_name(name, where):
    """Refuse absolute paths, drive letters, backslashes and '..' (zip-slip), wherever a name comes from."""
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or ":" in parts[0] or ".." in parts
            or "\x00" in name):
        raise DatasetError(f"{where}: unsafe path {name!r} (absolute, '..' or backslash); refusing it")


class Tree:
    """Files of an export by posix path relative to its root."""

    label = ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        pass

    def has(self, name):
        return name in self.sizes

    def _account(self, name, size):
        if size > self.limits.member_bytes:
            raise DatasetError(
                f"{self.label}: {name} is {size} bytes, over the limit of {self.limits.member_bytes} per file")
        if self.limits.read + size > self.limits.total_bytes:
            raise DatasetError(
                f"{self.label}: reading {name} would pass the limit of {self.limits.total_bytes} bytes in all")

    def read(self, name) -> bytes:
        if name not in self.sizes:
            raise DatasetError(f"{self.label}: {name} is missing")
        self._account(name, self.sizes[name])
        chunks, size = [], 0
        with self._open(name) as f:
            while chunk := f.read(READ_CHUNK):
                size += len(chunk)
                # the size in a zip header or a stat can lie or change: enforce the caps on what is read
                self._account(name, size)
                chunks.append(chunk)
        self.limits.read += size
        return b"".join(chunks)


class ZipTree(Tree):
    def __init__(self, path, limits):
        self.label, self.limits = str(path), limits
        try:
            self.zf = zipfile.ZipFile(path)
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise DatasetError(f"{path}: not a readable zip archive: {exc}") from exc
        if len(infos) > limits.members:
            self.zf.close()
            raise DatasetError(f"{path}: holds {len(infos)} entries, over the limit of {limits.members}")
        self.sizes = {}
        for info in infos:
            check_member_name(info.filename, f"{path}: archive member")
            if info.is_dir():
                continue
            if info.filename in self.sizes:
                raise DatasetError(f"{path}: archive holds {info.filename} twice")
            self.sizes[info.filename] = info.file_size
        self.infos = {i.filename: i for i in infos}

    def _open(self, name):
        try:
            return self.zf.open(self.infos[name])
        except (RuntimeError, NotImplementedError, zipfile.BadZipFile) as exc:  # encrypted, unknown compression
            raise DatasetError(f"{self.label}: cannot read {name}: {exc}") from exc

    def read(self, name):
        try:
            return super().read(name)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:  # bad CRC, truncated, zlib errors
            raise DatasetError(f"{self.label}: {name} is corrupt in the archive: {exc}") from exc

    def close(self):
        self.zf.close()


class DirTree(Tree):
    def __init__(self, root, limits, only_xml=None):
        self.root, self.label, self.limits = root.resolve(), str(root), limits
        self.sizes, self._paths = {}, {}
        if only_xml:  # an annotations.xml given by itself: its images lie beside it in images/
            self._add_file(only_xml, "annotations.xml")
            self._walk("images")
        else:
            self._walk("")

    def _walk(self, sub):
        top = self.root / sub
        for dirpath, dirnames, filenames in os.walk(top):  # does not follow links into other folders
            dirnames.sort()
            for fn in sorted(filenames):
                rel = Path(dirpath, fn).relative_to(self.root).as_posix()
                self._add_file(rel, rel)

    def _add_file(self, rel, as_name):
        if len(self.sizes) >= self.limits.members:
            raise DatasetError(f"{self.label}: holds more than {self.limits.members} files")
        try:
            st = (self.root / rel).stat()
        except OSError:
            return  # a dangling link
        if stat.S_ISREG(st.st_mode):
            self.sizes[as_name] = st.st_size
            self._paths[as_name] = rel

    def _open(self, name):
        full = (self.root / self._paths[name]).resolve()
        if not full.is_relative_to(self.root):
            raise DatasetError(f"{self.label}: {name} links outside the dataset folder; refusing it")
        return open(full, "rb")


# ---------------------------------------------------------------------------------------------
# format detection
