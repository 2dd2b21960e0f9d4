"""``--out DIR`` written all at once: files go to a hidden staging folder beside ``DIR``,
which is renamed to ``DIR`` only when everything is written.

So an interrupted or failed run leaves no folder that looks like a result (the staging
folder is removed on the way out, and its name starts with a dot). A ``DIR`` left by an
earlier ``regplug compare`` is replaced; any other non-empty ``DIR`` is refused rather than
mixed with.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from ..errors import RegplugError

__all__ = ["StagedOutput", "OutputError", "RESULT_MARKER"]

#: The file whose presence marks a folder as a complete ``regplug compare`` result.
RESULT_MARKER = "results.json"


class OutputError(RegplugError, OSError):
    """The output directory cannot be written (or would overwrite something else)."""


class StagedOutput:
    """A staging folder for ``target``; :meth:`commit` moves it into place.

    Used as a context manager, an exception (or a missing :meth:`commit`) removes the
    staging folder and leaves ``target`` as it was.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with StagedOutput(root / "run") as out:
    ...     _ = (out.path / "results.json").write_text("{}")
    ...     _ = out.commit()
    >>> sorted(p.name for p in root.iterdir()), (root / "run" / "results.json").exists()
    (['run'], True)
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.shown = str(target)
        self.target = Path(target).absolute()
        self._check_target()
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-",
                                              dir=parent))
            self.path.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename
        except OSError as err:
            raise OutputError(f"--out {self.shown!r}: cannot write there "
                              f"({err.strerror or err})") from None
        self.committed = False

    def _check_target(self) -> None:
        target = self.target
        if target.exists() and not target.is_dir():
            raise OutputError(f"--out {self.shown!r} exists and is not a directory")
        if target.is_dir():
            try:
                entries = [p.name for p in target.iterdir()]
            except OSError as err:
                raise OutputError(f"--out {self.shown!r}: cannot read it "
                                  f"({err.strerror or err})") from None
            if entries and RESULT_MARKER not in entries:
                raise OutputError(
                    f"--out {self.shown!r} exists and holds other files (no {RESULT_MARKER} "
                    "of an earlier comparison); choose a new or empty directory")
            if not os.access(target, os.W_OK):
                raise OutputError(f"--out {self.shown!r}: cannot write there "
                                  "(permission denied)")

    def commit(self) -> Path:
        """Move the staged files to ``target`` (replacing an earlier comparison's folder)."""
        old = None
        try:
            if self.target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-",
                                            dir=self.path.parent))
                os.replace(self.target, old / "previous")
            os.replace(self.path, self.target)
        except OSError as err:
            if old is not None and (old / "previous").exists() and not self.target.exists():
                os.replace(old / "previous", self.target)  # put the earlier result back
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise OutputError(f"--out {self.shown!r} was created by something else "
                                  "while this ran; nothing was written") from None
            raise OutputError(f"--out {self.shown!r}: cannot move the results into "
                              f"place ({err.strerror or err})") from None
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        self.committed = True
        return self.target

    def discard(self) -> None:
        """Remove the staging folder (nothing is left of an unfinished run)."""
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.discard()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
