"""A tar archive read front to back, one member at a time, that says where and why it stops being a tar.

Python's ``tarfile`` in stream mode (what the ``webdataset`` library reads shards with) ends an archive silently at
the first bad header after byte 0, so a shard corrupt half-way looks complete; it ignores whatever follows the
end-of-archive marker (a second tar concatenated to the first); and its errors carry no byte offset. This reader
walks the headers itself, with ``tarfile``'s rules for what a header means (ustar and GNU names, GNU long names
``L``/``K``, PAX ``x`` records for ``path`` and ``size``, base-256 sizes, the signed or unsigned checksum), and
ends with a :class:`Stop` that names the byte where the archive stopped being valid and why. Numbers are stricter
than ``tarfile``'s: every ustar number field is ASCII octal (or base-256), and a PAX number (``size``, ``mtime``...)
or record length ASCII decimal of at most 20 digits; ``tarfile`` takes Unicode digits, and raises (or reads 0) on
thousands of digits.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

BLOCK = 512
_ZERO = bytes(BLOCK)
_META_LIMIT = 1 << 20  # a PAX or GNU long-name header larger than this is garbage that passed a checksum
_SKIP_PIECE = 1 << 20
_OCTAL = re.compile(rb"[0-7]*")
# A PAX number is ASCII decimal, bounded: 20 digits hold any 64-bit value, and more would cost ``int()`` quadratic
# time (Python refuses past 4,300 digits with a ValueError); str.isdigit() would take Arabic-Indic or superscript
# digits, which are not tar numbers.
_PAX_INTEGER = re.compile(r"[0-9]{1,20}", re.ASCII)
_PAX_TIME = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,20})?", re.ASCII)  # mtime and friends: seconds, a fraction
_PAX_NUMBERS = {"size": _PAX_INTEGER, "uid": _PAX_INTEGER, "gid": _PAX_INTEGER, "mtime": _PAX_TIME,
                "atime": _PAX_TIME, "ctime": _PAX_TIME}
_RECORD_LENGTH = re.compile(rb"[0-9]{1,20}")
# the ustar number fields tarfile reads from every header (its nti() refuses a bad one): (start, end, name)
_FIELDS = ((100, 108, "mode"), (108, 116, "uid"), (116, 124, "gid"), (136, 148, "mtime"), (329, 337, "devmajor"),
           (337, 345, "devminor"))

# typeflag -> kind; tarfile treats these as carrying no data whatever their size field says
_NO_DATA = {b"1": "hard link", b"2": "symlink", b"3": "character device", b"4": "block device", b"5": "directory",
            b"6": "fifo"}
_REGULAR = (b"0", b"\0", b"7")  # 7: contiguous file, a regular file everywhere but on a few old systems


@dataclass(frozen=True)
class Entry:
    """One member: ``name`` as ``tarfile`` gives it (UTF-8, a byte that is not UTF-8 as a lone surrogate, a
    directory without its trailing ``/``), its ``kind`` (``"file"``, ``"directory"``, ``"symlink"``, ``"hard
    link"``, ``"fifo"``, ``"sparse file"``...), where its first header starts (``offset``), its data's ``size``
    and where that data starts; ``truncated_at`` is where the archive ends inside the data, else None."""

    name: str
    kind: str
    offset: int
    size: int
    data_offset: int
    target: str = ""  # a link's target
    truncated_at: int | None = None
    why: str = ""  # kind "unreadable file" (a folder's file that cannot be opened): the system's reason

    @property
    def is_file(self) -> bool:
        return self.kind == "file"


UNREADABLE_FILE = "unreadable file"
"""The kind of a folder's file that cannot be opened (:mod:`.folder`); a tar has no such member."""


@dataclass(frozen=True)
class Stop:
    """Where an archive stopped being a valid tar (``offset``) and why."""

    offset: int
    why: str


class _Corrupt(Exception):
    pass


class TarStream:
    """The members of the tar archive in ``file`` (``size`` bytes), in order, read once from the front.

    Iterate :meth:`entries`; while an entry is the current one, :meth:`read` returns its data (else it is skipped
    unread). After the loop, ``stop`` is None when the archive ended well (its end-of-archive marker with only
    zeros after it, or the end of the file at a member boundary), else a :class:`Stop`. With ``digest``
    (``hashlib`` object) every byte of the file is read and hashed, the skipped ones too; without, skips seek.

    >>> import io, tarfile
    >>> buffer = io.BytesIO()
    >>> with tarfile.open(fileobj=buffer, mode="w") as tar:
    ...     info = tarfile.TarInfo("a.txt"); info.size = 2; tar.addfile(info, io.BytesIO(b"hi"))
    >>> stream = TarStream(io.BytesIO(buffer.getvalue()), len(buffer.getvalue()))
    >>> [(e.name, stream.read(e)) for e in stream.entries()], stream.stop
    ([('a.txt', b'hi')], None)
    """

    def __init__(self, file: BinaryIO, size: int, digest: Any = None):
        self._file, self._size, self._digest = file, size, digest
        self._pos = 0
        self._current: Entry | None = None
        self._unread = 0  # data bytes of the current entry not yet consumed
        self.stop: Stop | None = None

    # -- bytes ---------------------------------------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        data = self._file.read(n)
        if self._digest is not None:
            self._digest.update(data)
        self._pos += len(data)
        return data

    def _skip(self, n: int) -> None:
        if self._digest is None:
            self._file.seek(n, 1)
            self._pos += n
            return
        while n > 0 and (piece := self._read(min(n, _SKIP_PIECE))):
            n -= len(piece)

    def finish(self) -> None:
        """Read (and hash) what is left of the file: an archive abandoned half-way still hashes whole."""
        if self._digest is not None:
            while self._read(_SKIP_PIECE):
                pass

    # -- members -------------------------------------------------------------------------------------------------
    def read(self, entry: Entry) -> bytes:
        """The data of ``entry``, the current one (short when it is truncated)."""
        if entry is not self._current or self._unread != entry.size:
            raise ValueError(f"member {entry.name!r} is not the current one, or its data was read already")
        self._unread = 0
        return self._read(entry.size)

    def entries(self) -> Iterator[Entry]:
        """Each member, in archive order; a truncated member is the last one yielded."""
        pax: dict[str, str] = {}
        long_name: str | None = None
        first: int | None = None  # offset of the first header (PAX, GNU) of the member being read
        while True:
            offset = self._pos
            block = self._read(BLOCK)
            if len(block) < BLOCK or block == _ZERO:
                if first is not None:
                    self.stop = Stop(first, "a PAX or GNU long-name header is not followed by the member it names")
                elif block == _ZERO:
                    self._check_tail(offset)
                elif block.strip(b"\0"):  # zeros only: the end-of-archive marker, cut short
                    why = f"the file ends inside a header ({len(block)} of {BLOCK} bytes)"
                    self.stop = Stop(offset, why + (_compressed(block) if offset == 0 else ""))
                return
            try:
                flag, name, size, target, sparse = _header(block)
                if flag in (b"x", b"g", b"L", b"K"):
                    data = self._meta_data(size, offset)
                    if flag == b"x":
                        pax = _pax_records(data)
                    elif flag == b"L":
                        long_name = _decode(data.split(b"\0", 1)[0])
                    if flag != b"g":  # a global header (git archive's commit id) names no member
                        first = offset if first is None else first
                    continue
                if "size" in pax:
                    size = int(pax["size"])  # checked ASCII digits, bounded, when its record was read
            except _Corrupt as exc:
                self.stop = Stop(offset, f"{exc}{_compressed(block) if offset == 0 else ''}")
                return
            name = pax.get("path", long_name if long_name is not None else name)
            kind = _kind(flag, name, sparse or any(k.startswith("GNU.sparse.") for k in pax))
            if kind == "directory":
                name = name.rstrip("/") or name
            if flag == b"S" and block[482]:
                self._skip_sparse_extensions()
            data_size = 0 if flag in _NO_DATA else size
            data_offset = self._pos
            truncated = self._size if data_offset + data_size > self._size else None
            entry = Entry(name, kind, first if first is not None else offset, data_size, data_offset,
                          pax.get("linkpath", target), truncated)
            pax, long_name, first = {}, None, None
            self._current, self._unread = entry, data_size
            yield entry
            if truncated is not None:
                return
            self._skip(self._unread + (-data_size % BLOCK))
            self._current, self._unread = None, 0

    def _meta_data(self, size: int, offset: int) -> bytes:
        if size > _META_LIMIT:
            raise _Corrupt(f"its PAX or GNU long-name header says {size} bytes (more than {_META_LIMIT})")
        data = self._read(size)
        if len(data) < size:
            raise _Corrupt("the file ends inside a PAX or GNU long-name header")
        self._skip(-size % BLOCK)
        return data

    def _skip_sparse_extensions(self) -> None:
        while (block := self._read(BLOCK)) and len(block) == BLOCK and block[504]:
            pass

    def _check_tail(self, marker: int) -> None:
        """After the end-of-archive marker at ``marker`` only zeros may follow: anything else is data a reader of
        the archive never sees (a second tar appended, a lone zero block in the middle of one)."""
        while piece := self._read(_SKIP_PIECE):
            start = self._pos - len(piece)
            rest = piece.lstrip(b"\0")
            if rest:
                where = start + len(piece) - len(rest)
                self.stop = Stop(where, f"data follows the end-of-archive marker at byte {marker} (a zero block; "
                                        "a second tar appended to the first?)")
                return


def _header(block: bytes) -> tuple[bytes, str, int, str, bool]:
    """``(typeflag, name, size, link target, old-GNU sparse)`` of a header block, or :class:`_Corrupt`."""
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    if stored != unsigned and stored != sum(struct.unpack("148b8x356b", block)) + 8 * 0x20:
        raise _Corrupt(f"bad header checksum (stored {stored}, computed {unsigned})")
    size = _number(block[124:136], "size")
    if size < 0:
        raise _Corrupt(f"its size field is negative ({size})")
    for start, end, what in _FIELDS:
        _number(block[start:end], what)
    flag = block[156:157]
    name = _decode(block[:100].split(b"\0", 1)[0])
    prefix = block[345:500].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0" and prefix:  # POSIX ustar; GNU headers keep other fields there
        name = _decode(prefix) + "/" + name
    return flag, name, size, _decode(block[157:257].split(b"\0", 1)[0]), flag == b"S"


def _compressed(block: bytes) -> str:
    """A hint when a "tar" is a compressed one: WebDataset shards are read as plain tar."""
    for magic, name in ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")):
        if block.startswith(magic):
            return f"; it is {name}-compressed: decompress it to a plain .tar"
    return ""


def _number(field: bytes, what: str) -> int:
    """A numeric header field as ``tarfile`` reads it: base-256 when its first byte is 0x80 or 0xff, else octal
    digits up to a NUL, spaces around them.

    >>> _number(b"0000012\\0", "size"), _number(b"\\x80" + bytes(10) + b"\\x01", "size")
    (10, 1)
    """
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    digits = field.split(b"\0", 1)[0].strip()
    if not _OCTAL.fullmatch(digits):
        raise _Corrupt(f"its {what} field {field!r} is not an octal number")
    return int(digits or b"0", 8)


def _kind(flag: bytes, name: str, sparse: bool) -> str:
    if sparse:
        return "sparse file"
    if flag in _REGULAR:
        return "directory" if flag == b"\0" and name.endswith("/") else "file"  # old V7: a directory as a file
    return _NO_DATA.get(flag, f"member of type {flag!r}")


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``key=value`` records of a PAX header (``"<length> <key>=<value>\\n"`` each), or :class:`_Corrupt`.

    >>> _pax_records(b"16 path=a/b.jpg\\n")
    {'path': 'a/b.jpg'}
    """
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos, pos + 21)
        length = data[pos:space]
        if space < 0 or not _RECORD_LENGTH.fullmatch(length) or not space - pos < int(length) <= len(data) - pos:
            raise _Corrupt(f"its PAX header has a malformed record at byte {pos}")
        record = data[space + 1 : pos + int(length)]
        if not record.endswith(b"\n") or b"=" not in record:
            raise _Corrupt(f"its PAX header has a malformed record at byte {pos}")
        key, value = (_decode(part) for part in record[:-1].split(b"=", 1))
        if key in _PAX_NUMBERS and not _PAX_NUMBERS[key].fullmatch(value):
            raise _Corrupt(f"its PAX header's {key} {_clip(value)} is not a decimal number of at most 20 digits")
        records[key] = value
        pos += int(length)
    return records


def _clip(value: str) -> str:
    """``repr(value)``, its middle cut when long: a message names a hostile value without carrying all of it."""
    return repr(value) if len(value) <= 40 else f"{value[:20]!r}...({len(value)} characters)"


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # tarfile's default on Linux: a bad byte stays recoverable
