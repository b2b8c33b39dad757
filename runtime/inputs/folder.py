"""A folder of files as INPUT: images alone (``--embed-only``), or img2dataset's ``files`` layout (``00001.jpg`` +
``00001.txt`` + ``00001.json``, in nested folders), one row per sample.

The folder is read as a WebDataset shard whose members are its files: :class:`FolderStream` gives them to the
WebDataset reader (:mod:`..webdataset`) in the order that keeps a sample's files together, so samples group, and
rows get their reasons (``missing_file``, ``null_text``, ``duplicate_member``, ``directory``...), exactly as a
tar's members would. What differs from a tar, and why:

- files are walked in sorted order (folders first, then files; hidden ``.`` names skipped), so a key's files are
  consecutive, as img2dataset writes them into its tars;
- a symlink to a file is that file (a tar stores a link, not the data); a broken one is ``not_a_file``;
- a file that cannot be opened (permission denied) is its row's ``unreadable`` (its caption's: ``null_text``);
- a key with neither an image nor a text file (img2dataset's ``00000_stats.json``, a ``.parquet``) is no sample;
- ``__shard__`` is the folder, the image column the file's path inside it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..contract.errors import NULL_TEXT, InputError, error_code
from .tarshards import is_webdataset
from .tarstream import UNREADABLE_FILE, Entry
from .webdataset import WdsOptions, WdsReader, member_key_ext, sample_row, samples_of

_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def is_file_folder(location: str | os.PathLike[str], image_ext: tuple[str, ...] = WdsOptions.image_ext) -> bool:
    """Whether INPUT is a folder of files to read as samples: a folder holding no ``.tar`` shard and at least one
    image file (tables beside them, such as img2dataset's ``00000.parquet`` and ``00000_stats.json``, are no
    samples).

    >>> is_file_folder("pairs.jsonl")
    False
    """
    if not os.path.isdir(location) or is_webdataset(location):
        return False
    images = tuple(f".{ext}" for ext in image_ext)
    return any(name.lower().endswith(images) and not name.startswith(".")
               for _, _, files in os.walk(location) for name in files)


def _walk(root: Path, folder: str = "") -> Iterator[str]:
    """Paths below ``root`` (relative, ``/``-separated), sorted: a folder's subfolders, then its files."""
    try:
        with os.scandir(root / folder) as scan:
            names = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in scan if not e.name.startswith("."))
    except OSError as exc:
        raise InputError(f"cannot list folder {str(root / folder)!r}: {exc.strerror or exc}: check that it is "
                         "readable") from None
    for name, is_dir in names:
        if is_dir:
            yield from _walk(root, f"{folder}{name}/")
    for name, is_dir in names:
        if not is_dir:
            yield f"{folder}{name}"


def _entry(root: Path, name: str) -> Entry:
    path = root / name
    try:
        info = os.stat(path)  # a symlink to a file is that file
    except OSError:
        target = os.readlink(path) if os.path.islink(path) else ""
        return Entry(name, "symlink" if target else "missing file", 0, 0, 0, target=target)
    kind = "file" if stat.S_ISREG(info.st_mode) else next((k for test, k in _KINDS if test(info.st_mode)), "special")
    if kind == "file":
        try:  # a file that cannot be opened (permission denied) costs its own row, as a path row's would
            os.close(os.open(path, os.O_RDONLY))
        except OSError as exc:
            return Entry(name, UNREADABLE_FILE, 0, 0, 0, why=exc.strerror or str(exc))
    return Entry(name, kind, 0, info.st_size if kind == "file" else 0, 0)


class FolderStream:
    """A folder's files as :class:`..tarstream.TarStream`'s members: ``entries()``, ``read(entry)``, ``stop`` and
    ``finish()``; with ``digest``, each used file's name and bytes are hashed as it is listed (the resume
    fingerprint)."""

    def __init__(self, root: Path, opts: WdsOptions, digest: Any = None):
        self.root, self._digest, self.stop = root, digest, None
        self._uses = set(opts.image_ext) | {opts.text_ext}

    def entries(self) -> Iterator[Entry]:
        names = list(_walk(self.root))
        samples = {key for key, ext in filter(None, map(member_key_ext, names)) if ext in self._uses}
        for name in names:
            split = member_key_ext(name)
            if split is None or split[0] not in samples:  # no image or text: not a sample (stats, parquet)
                continue
            entry = _entry(self.root, name)
            if self._digest is not None and entry.is_file:
                self._digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
                self._digest.update(self.read(entry))
            yield entry

    def read(self, entry: Entry) -> bytes:
        try:
            return (self.root / entry.name).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {str(self.root / entry.name)!r}: {exc.strerror or exc}: check that it "
                             "is readable") from None

    def finish(self) -> None:
        """Nothing is left to hash: the files were hashed as they were listed."""


class FolderReader(WdsReader):
    """A folder of files (see the module doc) with :class:`..webdataset.WdsReader`'s interface and rows."""

    format = "folder"

    def __init__(self, folder: str | os.PathLike[str], opts: WdsOptions | None = None, image_key: str = "image_path",
                 text_key: str = "text"):
        self.texts_found = 0  # samples with a text file: none, and a run without captions is an images-only one
        super().__init__([Path(folder)], opts, image_key, text_key)

    def _shard_rows(self, path: Path, images: bool, digest: Any) -> Iterator[Any]:
        shard = self._name or str(path)
        stream = FolderStream(path, self.opts, digest)
        for sample in samples_of(stream, self.opts, images):  # type: ignore[arg-type]
            if digest is not None and self.opts.text_ext in sample.members:
                self.texts_found += 1
            values, reason, image = sample_row(sample, shard, self.opts)
            if digest is None and not self.texts_found and error_code(reason) == NULL_TEXT:
                # a folder of images alone (no caption anywhere): each image is still embedded; the row's text
                # is null, which the pipeline gives its null_text (a scoring run scores nothing, --embed-only
                # counts it as no failure)
                reason, image = "", sample.image_data
            yield values, reason, image
