"""Finished sweep chunks on disk, so that an interrupted sweep resumes where it stopped.

Layout of a checkpoint folder (default: the output CSV's name with `.chunks`):

    manifest.json        {"fingerprint": <sha256 of specs, configurations, chunk>}
    chunk_000042.npy     outputs of chunk 42 (rows × len(OUTPUTS)), one file per chunk

Every file is written to a temporary name and renamed, so a chunk file is either whole
or absent. Each process of a multi-process sweep writes and clears only its own chunks
(i mod P = its index), so processes never touch each other's files, whether the folder
is on a shared file system or on each host's own disk.
"""

import json
import os
import socket
from pathlib import Path

import numpy as np

__all__ = ["SweepCheckpoint"]


class SweepCheckpoint:
    """A `diffperf.analysis.sweep.ChunkStore` in a folder.

    Args:
        path: the folder (created when needed).
        resume: keep chunks of an earlier run of the same sweep (same fingerprint);
            False starts afresh and deletes this process's old chunk files.

    Raises:
        ValueError: `resume` with a folder written by a different sweep.
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = False):
        self.path = Path(path)
        self.resume = resume
        self.chunks: list[int] = []

    def _chunk(self, index: int) -> Path:
        return self.path / f"chunk_{index:06d}.npy"

    def begin(self, fingerprint: str, chunks: list[int]) -> None:
        """Check (resume) or write the manifest; drop stale chunks when not resuming."""
        self.chunks = list(chunks)
        manifest = self.path / "manifest.json"
        if self.resume and manifest.exists():
            try:
                kept = json.loads(manifest.read_text()).get("fingerprint")
            except (OSError, ValueError):
                kept = None
            if kept != fingerprint:
                raise ValueError(
                    f"--resume: {self.path} holds chunks of a different sweep (spec, "
                    "seed or chunk changed); delete it or run without --resume"
                )
            return
        self.path.mkdir(parents=True, exist_ok=True)
        for i in self.chunks:
            self._chunk(i).unlink(missing_ok=True)
        _atomic_write(manifest, json.dumps({"fingerprint": fingerprint}).encode())

    def load(self, index: int) -> np.ndarray | None:
        """The kept outputs of chunk `index`, or None (absent or unreadable)."""
        if not self.resume:
            return None
        try:
            return np.load(self._chunk(index), allow_pickle=False)
        except (OSError, ValueError):
            return None

    def save(self, index: int, outputs: np.ndarray) -> None:
        """Write chunk `index` atomically."""
        tmp = self.path / f".chunk_{index:06d}.{_tag()}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(outputs), allow_pickle=False)
        os.replace(tmp, self._chunk(index))

    def held(self) -> list[int]:
        """Indices of this process's chunks present on disk."""
        return [i for i in self.chunks if self._chunk(i).exists()]

    def clear(self, *, last: bool) -> None:
        """Delete this process's chunk files; `last` also removes manifest, folder."""
        for i in self.chunks:
            self._chunk(i).unlink(missing_ok=True)
        if last:
            (self.path / "manifest.json").unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:  # other processes' chunks still there, or not empty
                pass


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{_tag()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tag() -> str:
    """Unique per process on a shared file system: host and process id."""
    return f"{socket.gethostname()}.{os.getpid()}"
