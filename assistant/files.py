"""Files written whole or not at all, and checked by hash: what packaged weights and voices need.

Every write goes to a uniquely named temporary file in the target's folder and is renamed into place, so
processes that build the same cache at once (synth's workers, a test run beside a training job) never see
or leave a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

CHUNK = 1 << 22


def file_sha256(path: str | Path) -> tuple[str, int]:
    """(hex sha256, size in bytes) of one file."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def join_parts(parts: Iterable[Path], target: Path, check: Callable[[str, int], None] | None = None) -> Path:
    """Concatenate ``parts`` in order into ``target``. ``check(sha256, size)`` sees the joined bytes' hash
    before the rename and raises to refuse them; then nothing is left behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h, written = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
        if check is not None:
            check(h.hexdigest(), written)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def copy_atomic(src: Path, dst: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}-", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp_name)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dst)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
