"""A git repository: ``git+https://host/org/repo.git@main::docs/**/*.md`` (also file:// and SSH).

A shallow clone (depth 1) into DATA_DIR/cache/git, then a shallow fetch of the
ref on each refresh (the git CLI, no prompts). Converted text is kept per blob
id, so only files whose content changed are read and converted again. Citations
use DOCS_BASE_URL when it is set (e.g. ``https://git.example.com/org/repo/src/main/{source}#{anchor}``),
else the repository's web view on GitHub / GitLab, else the file in the clone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from knowledge.errors import SourceError
from knowledge.sources.base import Source
from knowledge.sources.http import RefusedError, check_url, read_json, write_json
from knowledge.sources.spec import display, split_git_location
from knowledge.sources.formats import kind_of
from knowledge.sources.tree import INCLUDE, document, folder_tree, select
from knowledge.types import Document

log = logging.getLogger("knowledge.sources")

_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


class GitSource(Source):
    """The selected files of one ref of a repository, from a shallow clone kept between refreshes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.url, self.ref = split_git_location(self.spec.location)
        key = hashlib.sha256(self.spec.location.encode()).hexdigest()[:16]
        self.checkout = Path(self.options.cache_dir) / "git" / f"{self.spec.name}-{key}"
        self._texts_path = self.checkout.with_name(self.checkout.name + ".texts.json")
        self.converted = 0  # files read and converted in this read (the rest came from the cache)

    def read(self) -> list[Document]:
        self._check_url()
        self._sync()
        blobs = self._blobs()
        tree = folder_tree(self.label, self.checkout, options=self.options)
        tree.paths = [p for p in tree.paths if not p.startswith(".git/") and p in blobs]
        cached: dict[str, dict] = read_json(self._texts_path)
        kept: dict[str, dict] = {}
        docs = []
        for path in select(self.spec, tree):
            blob = blobs[path]
            hit = cached.get(path)
            link = self._link(path)
            # A file with includes is read again: a fragment may have changed under it.
            if hit and hit.get("blob") == blob and not hit.get("includes"):
                text, includes = hit["text"], False
            else:
                text = document(self.spec, tree, path).text
                includes = kind_of(path) == "markdown" and bool(INCLUDE.search(tree.read_text(path)))
                self.converted += 1
            kept[path] = {"blob": blob, "text": text, "includes": includes}
            docs.append(Document(source=path, text=text, source_name=self.spec.name, link=link))
        write_json(self._texts_path, kept)
        return docs

    # -- git ---------------------------------------------------------------------------
    def _check_url(self) -> None:
        scheme = urlsplit(self.url).scheme.lower() if "://" in self.url else ("ssh" if _SCP_LIKE.match(self.url)
                                                                            else "")
        if scheme in ("http", "https"):
            try:
                check_url(self.url, options=self.options)
            except RefusedError as error:
                raise SourceError(f"{self.label}: {error}") from None
        elif scheme not in ("file", "ssh", "git+ssh"):
            raise SourceError(f"{self.label}: use a git+https://, git+ssh://, git+file:// or git@host: URL")

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true",
               "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")}
        try:
            done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=self.options.download_deadline, check=False)
        except FileNotFoundError:
            raise SourceError(f"{self.label}: the git command is not installed") from None
        except subprocess.TimeoutExpired:
            raise SourceError(f"{self.label}: git {args[0]} took longer than "
                              f"{self.options.download_deadline:g} s") from None
        if done.returncode != 0:
            reason = " ".join((done.stderr or done.stdout).split())[-300:] or f"exit {done.returncode}"
            raise SourceError(f"{self.label}: git {args[0]} failed: {_redact(reason)}")
        return done.stdout

    def _sync(self) -> None:
        """Clone once (depth 1), then fetch the ref and move the checkout to it."""
        if (self.checkout / ".git").is_dir():
            ref = self.ref or "HEAD"
            self._git("fetch", "--depth", "1", "--no-tags", "origin", ref, cwd=self.checkout)
            self._git("reset", "--hard", "--quiet", "FETCH_HEAD", cwd=self.checkout)
            return
        shutil.rmtree(self.checkout, ignore_errors=True)  # a half-made clone from a killed run
        self.checkout.parent.mkdir(parents=True, exist_ok=True)
        branch = ["--branch", self.ref] if self.ref else []
        self._git("clone", "--depth", "1", "--single-branch", "--no-tags", *branch, self.url, str(self.checkout))

    def _blobs(self) -> dict[str, str]:
        """path -> blob id of every file at the checked-out commit."""
        out = self._git("ls-tree", "-r", "-z", "HEAD", cwd=self.checkout)
        blobs = {}
        for entry in out.split("\0"):
            if "\t" not in entry:
                continue
            meta, path = entry.split("\t", 1)
            mode, kind, blob = meta.split()
            if kind == "blob" and mode != "120000":  # symlinks are not documents
                blobs[path] = blob
        return blobs

    def _link(self, path: str) -> str:
        web = _web_view(self.url)
        if web:
            return f"{web}/{path}#{{anchor}}".replace("{ref}", self.ref or "HEAD")
        return (self.checkout / path).resolve().as_uri() + "#{anchor}"


def _web_view(url: str) -> str:
    """https://github.com/org/repo/blob/{ref} (GitLab: /-/blob/) for https remotes of those hosts."""
    if "://" not in url:
        match = re.match(r"^[\w.-]+@([\w.-]+):(.+)$", url)
        if not match:
            return ""
        host, path = match.group(1), match.group(2)
    else:
        parts = urlsplit(url)
        host, path = parts.hostname or "", parts.path
    path = path.strip("/").removesuffix(".git")
    if host == "github.com":
        return f"https://github.com/{path}/blob/{{ref}}"
    if host == "gitlab.com":
        return f"https://gitlab.com/{path}/-/blob/{{ref}}"
    return ""


def _redact(text: str) -> str:
    # git prints the remote URL in errors; credentials in it must not reach a log or Slack.
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", text)


__all__ = ["GitSource", "display"]
