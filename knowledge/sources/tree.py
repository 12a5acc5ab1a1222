"""Files of a folder, zip or git checkout: globbing, Milvus-style includes, guards, Documents.

Folders never follow a symlink out of the folder; zip members are read in
memory (never extracted) and checked against a size and a compression-ratio cap
before they are read, so a zip bomb stops with a clear error instead of filling
memory.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from knowledge.errors import SourceError
from knowledge.sources.formats import FormatError, decode, kind_of, to_markdown
from knowledge.sources.options import FetchOptions
from knowledge.sources.spec import DEFAULT_GLOB, SourceSpec, one_line
from knowledge.types import Document

log = logging.getLogger("knowledge.sources")

MAX_INCLUDE_DEPTH = 5
# `{{fragments/x.md}}` only: `{{var.x}}`, `{{tab}}` and template code stay as written.
INCLUDE = re.compile(r"\{\{\s*([\w./-]+\.mdx?)\s*\}\}")


# --------------------------------------------------------------------------- globbing


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """Compile a path glob: ``**`` spans folders, ``*`` and ``?`` stay inside one."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        ch = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and "]" in glob[i + 1 :]:
            end = glob.index("]", i + 1)
            body = glob[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append(f"[{body}]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


def matcher(glob: str) -> Callable[[str], bool]:
    """Paths a glob selects, among the file kinds that are read (see formats.SUPPORTED)."""
    pattern = glob_to_regex(glob.lstrip("/"))
    # "**/*.md" also picks MDX files, which are Markdown for our purposes.
    extra = glob_to_regex("**/*.mdx") if glob == "**/*.md" else None
    return lambda path: bool(
        kind_of(path) and (pattern.match(path) or (extra is not None and extra.match(path)))
    )


# --------------------------------------------------------------------------- trees


class Tree:
    """The files of one source: relative posix paths and their bytes."""

    def __init__(self, label: str, paths: Sequence[str], read: Callable[[str], bytes]) -> None:
        self.label = label
        self.paths = list(paths)
        self._set = set(paths)
        self._read = read

    def has(self, path: str) -> bool:
        return path in self._set

    def read_bytes(self, path: str) -> bytes:
        try:
            return self._read(path)
        except SourceError:
            raise
        except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, ValueError) as error:
            raise SourceError(f"{self.label}: cannot read {path}: {one_line(error)}") from None

    def read_text(self, path: str) -> str:
        return decode(self.read_bytes(path), label=self.label, path=path)


def folder_tree(label: str, root: Path, *, options: FetchOptions) -> Tree:
    """Every file under `root`; symlinks leading out of it are skipped with a warning."""
    root = root.resolve()
    paths: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        for name in list(dirs):
            if (here / name).is_symlink() and not _inside(here / name, root):
                log.warning("%s: %s links outside the folder; skipped", label, (here / name).relative_to(root))
                dirs.remove(name)
            elif (here / name).is_symlink():
                dirs.remove(name)  # inside the folder: its files are listed where they really are
        for name in files:
            path = here / name
            if path.is_symlink() and not _inside(path, root):
                log.warning("%s: %s links outside the folder; skipped", label, path.relative_to(root).as_posix())
                continue
            paths.append(path.relative_to(root).as_posix())

    def read(rel: str) -> bytes:
        path = root / rel
        if not _inside(path, root):  # a link swapped after listing
            raise SourceError(f"{label}: {rel} links outside the folder")
        size = path.stat().st_size
        if size > options.max_file_bytes:
            raise SourceError(f"{label}: {rel} is {size:,} bytes, over the {options.max_file_bytes:,}-byte file cap")
        return path.read_bytes()

    return Tree(label, sorted(paths), read)


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except OSError:
        return False


@contextmanager
def zip_tree(label: str, path: Path, *, options: FetchOptions) -> Iterator[Tree]:
    """The members of a zip, each checked against the size and ratio caps before it is read."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SourceError(f"{label}: {path.name} is not a readable zip file ({one_line(error)})") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist() if not info.is_dir()}
        total = sum(info.file_size for info in infos.values())
        if total > options.max_download_bytes * options.max_zip_ratio:
            raise SourceError(f"{label}: the zip would unpack to {total:,} bytes, over the cap "
                              f"(SOURCE_MAX_DOWNLOAD_MB x SOURCE_MAX_ZIP_RATIO)")

        def read(name: str) -> bytes:
            info = infos[name]
            if info.file_size > options.max_file_bytes:
                raise SourceError(f"{label}: {name} unpacks to {info.file_size:,} bytes, over the "
                                  f"{options.max_file_bytes:,}-byte file cap")
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > options.max_zip_ratio and info.file_size > 1 << 16:
                raise SourceError(f"{label}: {name} is compressed {ratio:,.0f}:1, over the "
                                  f"{options.max_zip_ratio:g}:1 cap (a zip bomb?)")
            # Read at most the declared size + 1: a member lying about its size is caught too.
            with archive.open(info) as member:
                data = member.read(info.file_size + 1)
            if len(data) > info.file_size:
                raise SourceError(f"{label}: {name} is larger than its zip entry says")
            return data

        # Members are read in memory, never extracted, so "../" names cannot escape.
        yield Tree(label, sorted(infos), read)


# --------------------------------------------------------------------------- includes


def resolve_includes(text: str, *, path: str, tree: Tree, depth: int = 0) -> str:
    """Replace ``{{fragments/x.md}}`` lines with the file's text (recursively).

    The include is looked up from the source root, then beside the including
    file and in each folder above it (a zip's docs often sit under "en/").
    A missing include (or one nested too deep) is dropped with a warning.
    """

    def replace(match: re.Match[str]) -> str:
        target = match.group(1).lstrip("/")
        folders = list(PurePosixPath(path).parents)[:-1]  # the file's folder up to, not incl., root
        candidates = [target, *(_normalise(folder / target) for folder in folders)]
        found = next((c for c in candidates if c and tree.has(c)), None)
        if found is None:
            log.warning("%s: %s includes missing file %s; dropped", tree.label, path, target)
            return ""
        if depth >= MAX_INCLUDE_DEPTH:
            log.warning("%s: %s includes %s too deeply; dropped", tree.label, path, target)
            return ""
        included = tree.read_text(found)
        return resolve_includes(included, path=found, tree=tree, depth=depth + 1).strip("\n")

    return INCLUDE.sub(replace, text)


def _normalise(path: PurePosixPath) -> str:
    """Collapse "a/../b" without touching the file system; "" when it leaves the root."""
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return ""
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return "/".join(parts)


# --------------------------------------------------------------------------- documents


def select(spec: SourceSpec, tree: Tree) -> list[str]:
    """The paths the spec's glob picks; raises SourceError when there are none."""
    matches = matcher(spec.glob or DEFAULT_GLOB)
    selected = [path for path in tree.paths if matches(path)]
    if not selected:
        raise SourceError(f"{tree.label}: no file matches {spec.glob!r}")
    return selected


def document(spec: SourceSpec, tree: Tree, path: str, *, link: str = "") -> Document:
    """One file as a Document (Markdown includes resolved). Raises SourceError naming the file."""
    try:
        if kind_of(path) == "markdown":
            text = resolve_includes(tree.read_text(path), path=path, tree=tree)
        else:
            text = to_markdown(tree.read_bytes(path), path=path, label=tree.label)
    except FormatError as error:
        raise SourceError(f"{tree.label}: {path}: {error}") from None
    return Document(source=path, text=text, source_name=spec.name, link=link)


def documents(spec: SourceSpec, tree: Tree, *, link_base: str = "") -> list[Document]:
    """Every selected file of a tree; `link_base` + path + "#{anchor}" is each one's own link."""
    return [
        document(spec, tree, path, link=f"{link_base}{path}#{{anchor}}" if link_base else "")
        for path in select(spec, tree)
    ]
