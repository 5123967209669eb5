"""Output folders that never lose or overwrite anything: the one place commands write results.

A ``StagedFolder`` is a result folder being made. Its target must not exist yet, or be an empty
folder; anything else (a file, a folder holding files, a place that cannot be written) is refused
when it is created, before any work. Files are written complete into a hidden staging folder beside
the target and appear in the target only at ``commit``: for a new target by one rename, so a reader
sees the whole result or nothing. ``discard`` removes the staging folder and any parent folders the
run created, so a failed run leaves nothing behind. Nothing outside what it created is ever removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


TMP_SUFFIX = ".partial"  # what `write_atomic` names its temporary files (a killed process may leave one)


class OutputError(ValueError):
    """An output location that cannot take a new result."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def next_run_folder(base: Path, stem: str = "run") -> Path:
    """The first ``base/stem-NNN`` that does not exist yet."""
    i = 1
    while (base / f"{stem}-{i:03d}").exists():
        i += 1
    return base / f"{stem}-{i:03d}"


class StagedFolder:
    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        t = self.target
        if t.exists() or t.is_symlink():
            if not t.is_dir():
                raise OutputError(f"the output {t} exists and is not a folder; name a new folder")
            entries = sorted(os.listdir(t))
            if entries:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise OutputError(f"the output folder {t} already holds {len(entries)} file(s) ({shown}); name a new "
                                  f"or empty folder: nothing is ever overwritten")
        missing = [p for p in [*reversed(t.parents)] if not p.exists()]
        self._created = missing[0] if missing else None  # topmost parent folder this run makes
        try:
            t.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{t.name}.staging-", dir=t.parent))
        except OSError as e:
            self._remove_created()
            raise OutputError(f"cannot write to the output folder {t}: {e.strerror or e}") from e

    def save(self, name: str, write: Callable[[Path], object]) -> None:
        """`write(path)` writes the file `name`; it lands in the target at ``commit``."""
        write(self.staging / name)

    def commit(self, keep: list[str] | None = None) -> Path:
        """Move the staged files into the target: one rename where the target is new. With `keep`, only
        those files: others (say, a file an interrupted step left half-made) are dropped first."""
        if keep is not None:
            for f in self.staging.iterdir():
                if f.name not in keep:
                    f.unlink()
        mode = 0o777 & ~_umask()  # as a folder made by mkdir (mkdtemp makes it private)
        os.chmod(self.staging, mode)
        for f in self.staging.iterdir():
            os.chmod(f, 0o666 & ~_umask())
        if not self.target.exists():
            self.staging.rename(self.target)
            return self.target
        for f in sorted(self.staging.iterdir()):  # an empty folder that was there before: fill it
            dest = self.target / f.name
            if dest.exists():
                raise OutputError(f"{dest} appeared during the run; the results stay in {self.staging}")
            os.replace(f, dest)
        self.staging.rmdir()
        return self.target

    def discard(self) -> None:
        """Remove everything this run made."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self._remove_created()

    def _remove_created(self) -> None:
        if self._created is None:
            return
        for p in [self.target.parent, *self.target.parent.parents]:
            try:
                p.rmdir()  # only ever removes an empty folder, and only up to the first one this run made
            except OSError:
                return
            if p == self._created:
                return


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object], sync: bool = True) -> None:
    """`write(tmp)` writes a hidden temporary file beside `path`, which then replaces `path` in one rename:
    a reader, or a run resumed after a kill, sees the whole file or none. `sync`: flushed to disk first."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if sync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # as a file made by open (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
