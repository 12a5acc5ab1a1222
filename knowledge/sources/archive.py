"""Zip files (local or downloaded) and single downloaded files (a PDF by URL)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from knowledge.errors import SourceError
from knowledge.sources.base import Source
from knowledge.sources.http import download
from knowledge.sources.spec import display
from knowledge.sources.tree import Tree, document, documents, zip_tree
from knowledge.types import Document


class ZipSource(Source):
    """A .zip file or URL; members checked against the size and ratio caps (tree.zip_tree)."""

    def read(self) -> list[Document]:
        if self.spec.is_url:
            archive = download(self.spec.location, cache_dir=self.options.cache_dir, label=self.label,
                               options=self.options)
            link = display(self.spec.location)
        else:
            archive = Path(self.spec.location).expanduser()
            if not archive.is_file():
                raise SourceError(f"{self.label}: zip file not found")
            link = archive.resolve().as_uri()
        with zip_tree(self.label, archive, options=self.options) as tree:
            docs = documents(self.spec, tree)
        # A zip cannot be linked into: its citations point at the zip itself.
        return [Document(source=d.source, text=d.text, source_name=d.source_name, link=link) for d in docs]


class FileUrlSource(Source):
    """One file by URL (a PDF handbook): downloaded with the guards, cited as URL#page=N."""

    def read(self) -> list[Document]:
        url = self.spec.location
        path = download(url, cache_dir=self.options.cache_dir, label=self.label, options=self.options,
                        expect="pdf")
        name = PurePosixPath(unquote(urlsplit(url).path)).name or "document.pdf"
        tree = Tree(self.label, [name], lambda _rel: path.read_bytes())
        return [document(self.spec, tree, name, link=f"{display(url)}#{{anchor}}")]
