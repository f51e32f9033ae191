"""An on-disk cache of folders, each written whole or not at all, safe for concurrent workers.

An entry is a folder named by its key holding the files and a ``manifest.json`` with each file's
size and sha256. A writer fills a private temporary folder beside the entries and renames it
into place in one step, so a reader sees either no entry or a complete one; when two workers
build the same entry at once, the first rename wins and the other's copy is dropped. An entry
whose files no longer match their manifest (a truncated or altered file) counts as absent and is
replaced by the next store.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

MANIFEST = "manifest.json"
_CHUNK = 1 << 22
STALE_SECONDS = 24 * 3600


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


class EntryCache:
    """Folders of files under ``root``, one per key (keys are file-name-safe strings)."""

    def __init__(self, root):
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str, *, check: bool = True) -> Path | None:
        """The entry's folder if it is there and complete (every file of its manifest with that
        size and, if ``check``, that sha256); else None."""
        folder = self.path(key)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            files = manifest["files"]
            for name, meta in files.items():
                f = folder / name
                if f.stat().st_size != meta["size"]:
                    return None
                if check and file_sha256(f) != meta["sha256"]:
                    return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return folder

    def store(self, key: str, write, meta: dict | None = None) -> Path:
        """Run ``write(folder)`` on a fresh temporary folder, record its files in the manifest and
        move it into place as the entry ``key``; returns the entry's folder.

        An existing complete entry (another worker's, finished first) is kept and ours dropped;
        an incomplete one is replaced.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=self.root))
        try:
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the entry from other users of a shared cache
            write(tmp)
            files = {
                f.name: {"size": f.stat().st_size, "sha256": file_sha256(f)}
                for f in sorted(tmp.iterdir()) if f.is_file() and f.name != MANIFEST
            }
            manifest = {"files": files, **(meta or {})}
            with open(tmp / MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            return self._publish(key, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, key: str, tmp: Path) -> Path:
        final = self.path(key)
        for _ in range(3):
            try:
                os.rename(tmp, final)  # atomic; fails if final exists and is not empty
                return final
            except OSError:
                if not final.exists():
                    continue  # removed between our rename and the check: try again
            if self.load(key) is not None:
                return final  # another worker's complete entry: keep it
            self._discard(final)
        raise OSError(f"could not place the cache entry {final}")

    def _sweep(self) -> None:
        """Delete what killed workers left behind (temporary and discarded folders a day old)."""
        limit = time.time() - STALE_SECONDS
        for leftover in self.root.glob(".*"):
            try:
                if leftover.name.endswith((".tmp", ".trash")) and leftover.stat().st_mtime < limit:
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                pass

    def _discard(self, folder: Path) -> None:
        """Move a broken entry out of the way in one step (readers holding its files keep
        them), then delete it."""
        trash = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.trash")
        try:
            os.rename(folder, trash)
        except OSError:
            return  # gone already: another worker discarded it
        shutil.rmtree(trash, ignore_errors=True)

    def remove(self, key: str) -> None:
        self._discard(self.path(key))
