"""Finding the lesson files to ingest, and the name each is stored under (its identity in the index).

Nothing found is dropped silently: what cannot be ingested comes back as an outcome with its reason, and a path
that could not be read marks what `--prune` must keep (see `covers`).
"""
from __future__ import annotations

import errno
import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from rag.loaders import SUFFIXES, describe_suffixes
from rag.normalize import nfc


@dataclass(frozen=True)
class SourceFile:
    """A file to ingest and the name it is stored under (its identity in the index: see `discover`)."""

    path: Path
    source: str


@dataclass(frozen=True)
class Outcome:
    """What happened to one file (or folder: its source then ends with "/")."""

    source: str
    status: str
    chunks: int = 0
    error: str | None = None
    notes: tuple[str, ...] = ()  # warnings about the file that did not stop it (e.g. an unclosed $$ on line 12)



def discover(paths: Iterable[Path]) -> tuple[list[SourceFile], list[Outcome]]:
    """Files to ingest under the given folders and files, and the outcomes of what was found but cannot be ingested.

    A file's name in the index is its path relative to the deepest folder holding everything given (NFC, "/"): one
    folder gives names relative to it (`lop10/bai1.md` for `data/lessons/`), `lop10/ lop11/` give `lop10/bai1.md`
    and `lop11/bai1.md`, a single file its own name. Folders are read recursively; links are followed, but never
    round a loop. Hidden files and folders (".name") are left out. Reported, never dropped silently: unsupported types,
    links that are broken or loop (failed for a lesson, skipped for a folder already being read), folders that cannot
    be read (failed: "name/"), the same file reached twice (skipped), and names that clash once NFC (failed, both
    named). `IngestJob.run(prune=True)` keeps every stored file that such a failure covers.
    """
    paths = list(paths)
    roots = [Path(os.path.abspath(p)) for p in paths]
    for given, root in zip(paths, roots):
        if not os.path.lexists(root):
            raise FileNotFoundError(f"No such file or folder: {given}")
    base = Path(os.path.commonpath([r if r.is_dir() else r.parent for r in roots])) if roots else Path.cwd()
    walk = _Walk(base)
    for root in roots:
        if root.is_dir():
            walk.folder(root, frozenset())
        else:
            walk.entry(root, given=True)
    return walk.result()


class _Walk:
    """One discovery: walks folders depth-first in name order and names what it finds relative to `base`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.found: dict[str, list[Path]] = {}  # NFC name → the paths that have it (more than one is a clash)
        self.real: dict[str, str] = {}  # real path → the name it was first found under
        self.outcomes: list[Outcome] = []

    def name(self, path: Path) -> str:
        relative = os.path.relpath(path, self.base)
        return "." if relative == "." else nfc(Path(relative).as_posix())

    def folder(self, folder: Path, active: frozenset[tuple[int, int]]) -> None:
        try:
            status = folder.stat()
            active = active | {(status.st_dev, status.st_ino)}  # the folders being read: a link back to one is a loop
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            self.outcomes.append(Outcome(f"{self.name(folder)}/", "failed", error=(
                f"cannot read folder ({exc.strerror or exc}); nothing under it was ingested, and the index keeps "
                "what it holds from there (also with --prune). Give the ingest user read access")))
            return
        for entry in entries:
            if not entry.name.startswith("."):
                self.entry(folder / entry.name, active)

    def entry(self, path: Path, active: frozenset[tuple[int, int]] = frozenset(), *, given: bool = False) -> None:
        name = self.name(path)
        try:
            status = path.stat()  # follows links: a broken one raises FileNotFoundError, a loop ELOOP
        except OSError as exc:
            if path.is_symlink():
                problem = "link loop" if exc.errno == errno.ELOOP else f"broken link (to {os.readlink(path)})"
                self.outcomes.append(Outcome(name, "failed", error=f"{problem}; fix or remove the link"))
            else:
                self.outcomes.append(Outcome(name, "failed", error=f"cannot read ({exc.strerror or exc})"))
            return
        if stat.S_ISDIR(status.st_mode):
            if (status.st_dev, status.st_ino) in active:
                self.outcomes.append(Outcome(f"{name}/", "skipped", error="link to a folder that contains it (a loop); not followed"))
            else:
                self.folder(path, active)
        elif not stat.S_ISREG(status.st_mode):
            self.outcomes.append(Outcome(name, "skipped", error="not a regular file"))
        elif path.suffix.lower() not in SUFFIXES:  # asked for by name: failed; met in a folder: skipped
            error = f"unsupported type {path.suffix or '(none)'}" + (f"; use {describe_suffixes()}" if given else "")
            self.outcomes.append(Outcome(name, "failed" if given else "skipped", error=error))
        else:
            real = os.path.realpath(path)
            first = self.real.setdefault(real, name)
            if first != name:
                self.outcomes.append(Outcome(name, "skipped", error=f"same file as {first} (a link); ingested once, as {first}"))
            elif path not in self.found.setdefault(name, []):
                self.found[name].append(path)

    def result(self) -> tuple[list[SourceFile], list[Outcome]]:
        files: list[SourceFile] = []
        for name, paths in self.found.items():
            if len(paths) == 1:
                files.append(SourceFile(paths[0], name))
                continue
            named = " and ".join(f"{self.name_as_written(p)} ({_form(p.name)})" for p in paths)
            self.outcomes.append(Outcome(name, "failed", error=(
                f"{len(paths)} files have this name once Unicode-normalised (NFC): {named}; rename or remove all but one")))
        order = lambda source: source.split("/")  # noqa: E731 (the order of Path sorting: folder by folder)
        return sorted(files, key=lambda f: order(f.source)), sorted(self.outcomes, key=lambda o: order(o.source))

    def name_as_written(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.base)).as_posix()


def _form(name: str) -> str:
    if name == unicodedata.normalize("NFC", name):
        return "composed, NFC"
    return "decomposed, NFD" if name == unicodedata.normalize("NFD", name) else "mixed normalisation"


def covers(failed: Outcome, source: str) -> bool:
    """Whether a stored `source` is under a failed path (the file itself, or a folder "name/") and so must be kept."""
    if not failed.source.endswith("/"):
        return failed.source == source
    folder = failed.source.rstrip("/")
    return folder in ("", ".") or source.startswith(f"{folder}/")
