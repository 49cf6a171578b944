"""The versioned model store: <store>/<name>/<version>/, written atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: Path) -> int:
    return max(versions(model_dir), default=0) + 1


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def staging(model_dir: Path, version: int) -> Path:
    """A hidden sibling folder to write a version into before it is published."""
    model_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=model_dir))


def discard(staged: Path) -> None:
    """Remove a staged version that will not be published."""
    shutil.rmtree(staged, ignore_errors=True)


def publish(staged: Path, model_dir: Path, version: int) -> Path:
    """Rename the staged folder into place: readers see the whole version or none of it."""
    final = model_dir / str(version)
    if final.exists():
        discard(staged)
        raise FileExistsError(f"{final} already exists; versions are never overwritten")
    os.chmod(staged, 0o755)  # mkdtemp makes it 0700
    os.rename(staged, final)
    return final
