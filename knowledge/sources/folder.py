"""A local folder (or a single local file): every supported file the glob picks."""

from __future__ import annotations

from pathlib import Path

from knowledge.errors import SourceError
from knowledge.sources.base import Source
from knowledge.sources.tree import Tree, documents, folder_tree
from knowledge.types import Document


class FolderSource(Source):
    """Files under a folder; symlinks out of it are not followed (tree.folder_tree)."""

    def read(self) -> list[Document]:
        path = Path(self.spec.location).expanduser()
        if path.is_dir():
            tree = folder_tree(self.label, path, options=self.options)
            base = path.resolve().as_uri() + "/"
            return documents(self.spec, tree, link_base=base)
        if path.is_file():  # one file: the glob does not apply
            tree = Tree(self.label, [path.name], lambda _rel: _read_capped(path, self))
            base = path.resolve().parent.as_uri() + "/"
            return documents(self.spec.__class__(self.spec.name, self.spec.location, "**/*"), tree,
                             link_base=base)
        raise SourceError(f"{self.label}: folder not found")


def _read_capped(path: Path, source: Source) -> bytes:
    size = path.stat().st_size
    if size > source.options.max_file_bytes:
        raise SourceError(f"{source.label}: {path.name} is {size:,} bytes, over the "
                          f"{source.options.max_file_bytes:,}-byte file cap")
    return path.read_bytes()
