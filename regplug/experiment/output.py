"""``--out DIR`` written all at once: files go to a hidden staging folder beside ``DIR``,
which is renamed to ``DIR`` only when everything is written (both commands' output).

So an interrupted or failed run leaves no folder that looks like a result (the staging
folder is removed on the way out — on an exception, Ctrl-C or SIGTERM — and its name starts
with a dot). Every file written is listed, with its size and SHA-256, in
:data:`MANIFEST` inside ``DIR``. A later run replaces ``DIR`` only when everything in it is
listed there unchanged: a folder regplug did not write, a file added or edited since, a
symbolic link or a path inside another run's staging folder is refused, naming what is in
the way — regplug never deletes what it did not write.

Docs: docs/compare.md, docs/tune.md
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

from ..errors import RegplugError

__all__ = ["StagedOutput", "OutputError", "RESULT_MARKER", "MANIFEST", "Terminated",
           "exit_cleanly_on_sigterm", "foreign_entries"]

#: The file whose presence marks a folder as a complete ``regplug compare`` result.
RESULT_MARKER = "results.json"
#: The list of files regplug wrote into an output folder (relative path → size, SHA-256).
MANIFEST = ".regplug-manifest.json"
MANIFEST_FORMAT = "regplug-output-manifest/1"
#: Names of the staging folders (``.DIR.partial-*``) and of the earlier result while it is
#: being replaced (``.DIR.old-*``): removed when a run ends, so never a place for ``--out``.
_STAGING_NAME = re.compile(r"^\..+\.(partial|old)-[^/]*$")
_SHOWN = 5  # at most this many names in a message


class OutputError(RegplugError, OSError):
    """The output directory cannot be written (or would overwrite something else)."""


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like an exception (so the staging folder is removed), then
    exits with status 143 (128 + SIGTERM), as a process killed by SIGTERM would."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


@contextlib.contextmanager
def exit_cleanly_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration, then restore the previous
    handler. Outside the main thread (where Python cannot set handlers) nothing changes.
    """
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    except Terminated:
        print("regplug: terminated (SIGTERM); nothing was written", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """List every file under ``folder`` (size and SHA-256) in ``folder / MANIFEST``."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != MANIFEST:
            rel = path.relative_to(folder).as_posix()
            files[rel] = {"size": path.stat().st_size, "sha256": file_digest(path)}
    payload = {"format": MANIFEST_FORMAT, "files": files}
    (folder / MANIFEST).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def foreign_entries(folder: Path) -> tuple[list[str], str]:
    """What in ``folder`` regplug did not write (relative paths), and why it counts as ours
    or not: every file must be listed in :data:`MANIFEST` with the same size and hash.

    An empty folder has nothing foreign. Without a readable manifest everything is foreign.
    """
    entries = sorted(folder.rglob("*"))
    if not entries:
        return [], ""
    try:
        payload = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        listed = payload.get("files") if payload.get("format") == MANIFEST_FORMAT else None
        if not isinstance(listed, dict):
            raise ValueError("not a manifest")
    except (OSError, ValueError, AttributeError):
        return _leaves(folder, entries), f"no {MANIFEST} of an earlier regplug run"
    foreign, changed = [], []
    for path in entries:
        rel = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                foreign.append(rel + "/")  # an empty folder: regplug writes none
        elif rel == MANIFEST and path.is_file() and not path.is_symlink():
            continue
        elif rel not in listed or path.is_symlink() or not path.is_file():
            foreign.append(rel)
        else:
            entry = listed[rel]
            if (not isinstance(entry, dict) or entry.get("size") != path.stat().st_size
                    or entry.get("sha256") != file_digest(path)):
                changed.append(rel)
    if foreign:
        return foreign + changed, "not written by regplug"
    if changed:
        return changed, "changed since regplug wrote them"
    return [], ""


def _leaves(folder: Path, entries: list[Path]) -> list[str]:
    """Files, links and empty folders (what a user would call the folder's contents)."""
    return [p.relative_to(folder).as_posix() + ("/" if p.is_dir() and not p.is_symlink() else "")
            for p in entries
            if not p.is_dir() or p.is_symlink() or not any(p.iterdir())]


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


class StagedOutput:
    """A staging folder for ``target``; :meth:`commit` moves it into place.

    Used as a context manager, an exception (or a missing :meth:`commit`) removes the
    staging folder and leaves ``target`` as it was.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with StagedOutput(root / "run") as out:
    ...     _ = (out.path / "results.json").write_text("{}")
    ...     _ = out.commit()
    >>> sorted(p.name for p in root.iterdir()), sorted(p.name for p in (root / "run").iterdir())
    (['run'], ['.regplug-manifest.json', 'results.json'])
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.shown = str(target)
        self.target = Path(target).absolute()
        self.committed = False
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

    def _check_target(self) -> None:
        target = self.target
        for folder in (target, *target.parents):
            if _STAGING_NAME.match(folder.name):
                raise OutputError(
                    f"--out {self.shown!r} lies inside {str(folder)!r}, a staging folder "
                    "that a regplug run removes when it ends; choose another --out")
        if target.is_symlink():
            raise OutputError(f"--out {self.shown!r} is a symbolic link (to "
                              f"{os.readlink(target)!r}); regplug replaces the folder it "
                              "names, so give the real folder or another --out")
        if target.exists() and not target.is_dir():
            raise OutputError(f"--out {self.shown!r} exists and is not a directory; choose "
                              "another --out")
        if target.is_dir():
            try:
                foreign, why = foreign_entries(target)
            except OSError as err:
                raise OutputError(f"--out {self.shown!r}: cannot read it "
                                  f"({err.strerror or err})") from None
            if foreign:
                raise OutputError(
                    f"--out {self.shown!r} exists and holds other files ({why}): "
                    f"{_names(foreign)}; regplug replaces only its own earlier output — "
                    "choose another --out, or move those files away")
            if not os.access(target, os.W_OK):
                raise OutputError(f"--out {self.shown!r}: cannot write there "
                                  "(permission denied)")

    def commit(self) -> Path:
        """List the staged files in the manifest, then move them to ``target`` (replacing an
        earlier comparison's folder, checked again: nothing added or changed meanwhile)."""
        try:
            write_manifest(self.path)
        except OSError as err:
            raise OutputError(f"--out {self.shown!r}: cannot write there "
                              f"({err.strerror or err})") from None
        try:
            self._check_target()
        except OutputError as err:
            raise OutputError(f"{err} (it changed while this ran; nothing was written)"
                              ) from None
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
