"""One listing of a corpus URI, relative to its root: the files and folders under it.

Why one listing: ``fs.find(root, detail=True, withdirs=True)`` is one paginated call, not one per
video, so 10,000 videos on S3 list in seconds; everything that decides what a corpus holds (the
layout, the seed masks next to it) then works on this in-memory tree.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.common import StorageOptions
from stm_core.codec import natural_key

from ..storage import open_fs

__all__ = [
    "Tree",
    "hidden",
    "is_under",
    "list_tree",
    "listing_version",
    "open_corpus_fs",
    "parent_folder",
    "relative",
    "subtree",
    "suffix_of",
]


def open_corpus_fs(uri: str, options: StorageOptions) -> tuple[Any, str]:
    """:func:`pipeline.storage.open_fs` with the path normalised as the filesystem lists it
    (absolute for local paths, no trailing slash), so listed names can be made relative."""
    fs, path = open_fs(uri, options)
    return fs, fs._strip_protocol(path).rstrip("/") or "/"


@dataclass
class Tree:
    """One listing relative to a root: files (rel path -> info) and folders (rel paths).

    ``children`` answers from an index built once, so a corpus of 10,000 folders and a
    million frames is walked in linear time.
    """

    files: dict[str, Mapping[str, Any]]
    dirs: set[str]
    _index: dict[str, tuple[list[str], list[str]]] | None = None

    def children(self, folder: str) -> tuple[list[str], list[str]]:
        """Names of the sub-folders (sorted) and of the files (natural order) directly in
        ``folder`` ("" = the root)."""
        if self._index is None:
            index: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
            for d in self.dirs:
                index[parent_folder(d)][0].append(posixpath.basename(d))
            for f in self.files:
                index[parent_folder(f)][1].append(posixpath.basename(f))
            for subdirs, names in index.values():
                subdirs.sort()
                names.sort(key=natural_key)
            self._index = dict(index)
        return self._index.get(folder, ([], []))


def parent_folder(rel: str) -> str:
    return posixpath.dirname(rel)


def hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def list_tree(fs: Any, root: str) -> tuple[Tree, Mapping[str, Any] | None]:
    """List everything under ``root`` once. Returns the tree and, when ``root`` is a file, its
    info (the tree is then empty). A missing root raises FileNotFoundError."""
    fs.invalidate_cache(root)  # s3fs/gcsfs keep listings; another writer may have added videos
    entries = fs.find(root, detail=True, withdirs=True)
    if not entries and not fs.exists(root):
        raise FileNotFoundError(f"{root} does not exist")
    if len(entries) == 1 and root in entries and entries[root].get("type") == "file":
        return Tree({}, set()), entries[root]
    files: dict[str, Mapping[str, Any]] = {}
    dirs: set[str] = set()
    prefix = root + "/"
    for name, info in entries.items():
        name = name.rstrip("/")
        if not name.startswith(prefix):
            continue  # the root itself
        rel = name[len(prefix) :]
        if hidden(rel):
            continue
        if info.get("type") == "directory":
            dirs.add(rel)
        else:
            files[rel] = info
    # Object stores may list keys without their "folders", or only some of them (s3fs's
    # withdirs listing can hold "a/b/c" but not "a/b" or "a"), so every ancestor of every entry
    # is added; ``walked`` marks folders whose ancestors are already in, to stay linear.
    walked: set[str] = set()
    for rel in [*files, *dirs]:
        parent = parent_folder(rel)
        while parent and parent not in walked:
            walked.add(parent)
            parent = parent_folder(parent)
    dirs |= walked
    return Tree(files, dirs), None


def subtree(tree: Tree, folder: str) -> Tree:
    prefix = folder + "/"
    return Tree(
        {k[len(prefix) :]: v for k, v in tree.files.items() if k.startswith(prefix)},
        {d[len(prefix) :] for d in tree.dirs if d.startswith(prefix)},
    )


def listing_version(infos: Iterable[Mapping[str, Any]]) -> str:
    """A short fingerprint of files (name, size, ETag or mtime) for cache invalidation."""
    digest = hashlib.sha1()
    for info in sorted(infos, key=lambda i: str(i.get("name"))):
        stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        digest.update(f"{info.get('name')}|{info.get('size')}|{stamp}\n".encode())
    return digest.hexdigest()[:16]


def suffix_of(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def is_under(rel: str, folder: str | None) -> bool:
    return folder is not None and (folder == "" or rel == folder or rel.startswith(folder + "/"))


def relative(path: str, root: str) -> str | None:
    if path == root:
        return ""
    return path[len(root) + 1 :] if path.startswith(root + "/") else None
