"""Where WebDataset shards are: brace patterns (``shards/{00000..00099}.tar``), folders and globs of ``.tar``
files, local paths only; and whether an INPUT is WebDataset at all."""

from __future__ import annotations

import glob
import itertools
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import BinaryIO

from .errors import InputError
from .tables import FORMATS
from .tarstream import Entry, TarStream

SUFFIX = ".tar"
KEY_COLUMN, SHARD_COLUMN = "__key__", "__shard__"  # a WebDataset row's sample key and shard, first in its output
_GLOB = "*?["
_MAX_SHARDS = 1_000_000  # a brace pattern expanding to more is a typo, not a dataset
_RANGE = re.compile(r"(\d+)\.\.(\d+)(?:\.\.(\d+))?")


def expand_braces(pattern: str) -> list[str]:
    """The names a WebDataset brace pattern stands for, in order: ``{a,b}`` lists (empty items allowed), ``{lo..hi}``
    and ``{lo..hi..step}`` ranges of non-negative integers, up or down, zero-padded to the longer bound when either
    is written with a leading zero (``braceexpand``'s rule); several braces multiply, the leftmost varying slowest.
    Nested braces, a brace that does not close and a brace that is neither a list nor a range are
    :class:`InputError`.

    >>> expand_braces("shards/{00008..00010}.tar")
    ['shards/00008.tar', 'shards/00009.tar', 'shards/00010.tar']
    >>> expand_braces("{a,b}-{1..2}.tar")
    ['a-1.tar', 'a-2.tar', 'b-1.tar', 'b-2.tar']
    """
    depth = 0
    for char in pattern:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth > 1:
            raise InputError(f"{pattern!r}: nested braces are not supported; write the names out, e.g. {{a1,a2,b}}")
        if depth < 0:
            raise InputError(f"{pattern!r}: a '}}' closes no brace; balance the braces")
    if depth:
        raise InputError(f"{pattern!r}: a '{{' is never closed; balance the braces")
    pieces = re.split(r"(\{[^{}]*\})", pattern)
    parts = [_alternatives(p[1:-1], pattern) if p.startswith("{") else [p] for p in pieces]
    if math.prod(len(p) for p in parts) > _MAX_SHARDS:
        raise InputError(f"{pattern!r} stands for more than {_MAX_SHARDS:,} names: check its ranges")
    return ["".join(names) for names in itertools.product(*parts)]


def _alternatives(body: str, pattern: str) -> list[str] | _Formatted:
    match = _RANGE.fullmatch(body)
    if match:
        low, high, step = match.group(1), match.group(2), int(match.group(3) or 1)
        if step == 0:
            raise InputError(f"{pattern!r}: the step of {{{body}}} is 0; use 1 or more")
        padded = any(b.startswith("0") and b != "0" for b in (low, high))
        width = max(len(low), len(high)) if padded else 0
        numbers = range(int(low), int(high) + 1, step) if int(low) <= int(high) else range(int(low), int(high) - 1,
                                                                                             -step)
        return _Formatted(numbers, width)
    if "," in body:
        return body.split(",")
    raise InputError(f"{pattern!r}: {{{body}}} is neither a list {{a,b}} nor a range {{0..9}} (numbers only)")


class _Formatted:
    """A zero-padded range of names, sized without making them (a typo like ``{0..99999999999}`` costs nothing)."""

    def __init__(self, numbers: range, width: int):
        self.numbers, self.width = numbers, width

    def __len__(self) -> int:
        return len(self.numbers)

    def __iter__(self) -> Iterator[str]:
        return (f"{n:0{self.width}d}" for n in self.numbers)


def find_tar_shards(location: str | os.PathLike[str]) -> list[Path]:
    """The ``.tar`` shards ``location`` names, in row order: a ``.tar`` file; a folder (every ``.tar`` below it,
    sorted by path, names starting with ``.`` or ``_`` skipped, as for table shards); a glob (``*``, ``?``,
    ``[...]`` within one path component; its ``.tar`` matches, sorted); or a brace pattern (each name in order,
    itself a file, folder or glob; one that does not exist is an :class:`InputError` naming it). Local paths only.

    >>> find_tar_shards("laion/{00000..00002}.tar")          # doctest: +SKIP
    [PosixPath('laion/00000.tar'), PosixPath('laion/00001.tar'), PosixPath('laion/00002.tar')]
    """
    text = os.fspath(location)
    if "://" in text or text.startswith("pipe:"):
        raise InputError(f"{text!r}: WebDataset shards are read from local paths only; copy or mount them here")
    if "{" not in text and "}" not in text:
        return _find_one(text, text)
    names = expand_braces(text)
    missing = [name for name in names if not (_has_glob(name) or os.path.exists(name))]
    if missing:
        raise InputError(f"shard {missing[0]!r} of {text!r} does not exist ({len(missing)} of the {len(names)} "
                         "names it stands for are missing): fix the pattern or fetch the missing shards")
    shards = [shard for name in names for shard in _find_one(name, text)]
    seen: set[Path] = set()
    for shard in shards:
        if shard in seen:
            raise InputError(f"{text!r} names shard {str(shard)!r} more than once: each shard must appear once")
        seen.add(shard)
    return shards


def _find_one(location: str, given: str) -> list[Path]:
    if _has_glob(location):
        found = [Path(p) for p in sorted(_glob_tars(location))]
        if not found:
            raise InputError(f"no .tar shards match {location!r}" + (f" (of {given!r})" if given != location else ""))
        return found
    path = Path(location)
    if path.is_dir():
        found = _tars_below(path)
        if not found:
            raise InputError(f"folder {location!r} holds no .tar shards: give the folder they are in, or a glob")
        return found
    if not path.exists():
        raise InputError(f"input {location!r} does not exist")
    if not path.is_file() or path.suffix.lower() != SUFFIX:
        raise InputError(f"{location!r} is not a .tar file: WebDataset shards are plain .tar (decompress a .tar.gz)")
    return [path]


def _has_glob(location: str) -> bool:
    return any(c in location for c in _GLOB)


def _visible(path: str, base: str) -> bool:
    """Not hidden below ``base``: no ``.name`` or ``_name`` part (``_tmp``, partial writes), as for table shards."""
    return not any(part.startswith((".", "_")) for part in PurePath(os.path.relpath(path, base)).parts)


def _glob_tars(pattern: str) -> list[str]:
    base = pattern[: pattern.rfind("/", 0, min(pattern.index(c) for c in _GLOB if c in pattern)) + 1] or "."
    return [p for p in glob.glob(pattern) if p.lower().endswith(SUFFIX) and os.path.isfile(p) and _visible(p, base)]


def _files_below(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        yield from (Path(root, f) for f in files if not f.startswith((".", "_")))


def _tars_below(folder: Path) -> list[Path]:
    return sorted((p for p in _files_below(folder) if p.suffix.lower() == SUFFIX), key=str)


def unreadable_shard(shard: str, exc: OSError) -> InputError:
    """The one line for a shard that cannot be opened or read (a run problem: refused, never a row's reason)."""
    return InputError(f"cannot read shard {shard!r}: {exc.strerror or exc}: check that it is readable")


def is_webdataset(location: str | os.PathLike[str]) -> bool:
    """Whether an INPUT is WebDataset shards: it ends with ``.tar`` (after brace expansion, or as a glob), or is a
    folder holding ``.tar`` files and no table files (a folder with both is ambiguous: name its ``*.tar``).

    >>> is_webdataset("laion/{00000..00099}.tar"), is_webdataset("shards/*.tar"), is_webdataset("pairs.jsonl")
    (True, True, False)
    """
    text = os.fspath(location)
    try:
        names = expand_braces(text) if "{" in text or "}" in text else [text]
    except InputError:  # malformed: a WebDataset pattern if it looks like one, so its own error is the one shown
        return text.lower().endswith(SUFFIX)
    if all(name.lower().endswith(SUFFIX) for name in names):
        return True
    if len(names) > 1 or _has_glob(text) or not os.path.isdir(text):
        return False
    suffixes = {p.suffix.lower() for p in _files_below(Path(text))}
    return SUFFIX in suffixes and not suffixes & set(FORMATS)


class ShardMember:
    """An image inside a shard, as a scored WebDataset row names it (``__shard__`` and the member's name): what
    the report shows a thumbnail of."""

    __slots__ = ("shard", "name")

    def __init__(self, shard: str, name: str):
        self.shard, self.name = shard, name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShardMember) and (self.shard, self.name) == (other.shard, other.name)

    def __hash__(self) -> int:
        return hash((self.shard, self.name))

    def __str__(self) -> str:
        return f"{self.shard}:{self.name}"

    __repr__ = __str__


class MemberReader:
    """Members' bytes by name, each shard's index read once with the reader rows come from (:class:`TarStream`:
    headers only, data skipped by seeking), so a name means the member a row was read from. For the few images a
    report shows; an unreadable member is :class:`ImageError`, and so is a name the shard holds twice (which of
    them a row was is unknown: no thumbnail rather than another sample's)."""

    def __init__(self) -> None:
        self._shards: dict[Path, tuple[BinaryIO, dict[str, list[Entry]]]] = {}

    def read(self, shard: Path, name: str) -> bytes:
        from . import errors
        from .errors import ImageError

        where = f"member {name!r} of shard {str(shard)!r}"
        try:
            if shard not in self._shards:
                self._shards[shard] = self._index(shard)
            file, index = self._shards[shard]
            entries = index.get(name, [])
            if len(entries) == 1 and entries[0].is_file and entries[0].truncated_at is None:
                file.seek(entries[0].data_offset)
                return file.read(entries[0].size)
        except OSError as exc:
            raise ImageError(errors.MISSING_FILE, f"cannot read {where}: {exc.strerror or exc}") from None
        if not entries:
            raise ImageError(errors.MISSING_FILE, f"cannot read {where}: the shard has no such member")
        if len(entries) > 1:
            raise ImageError(errors.DUPLICATE_MEMBER, f"{where} is there {len(entries)} times: which is meant is "
                             "unknown")
        raise ImageError(errors.NOT_A_FILE, f"{where} is not a whole file ({entries[0].kind})")

    @staticmethod
    def _index(shard: Path) -> tuple[BinaryIO, dict[str, list[Entry]]]:
        file = open(shard, "rb")  # noqa: SIM115 - kept open for the report's reads, closed by close()
        index: dict[str, list[Entry]] = {}
        try:
            for entry in TarStream(file, os.fstat(file.fileno()).st_size).entries():
                index.setdefault(entry.name, []).append(entry)
        except BaseException:
            file.close()
            raise
        return file, index

    def close(self) -> None:
        for file, _ in self._shards.values():
            file.close()
        self._shards.clear()
