"""WebDataset shards in: ``.tar`` files whose members group into samples (``<key>.jpg`` + ``<key>.txt`` +
``<key>.json``), one row per sample, streamed; what img2dataset writes for LAION, DataComp, COYO, CC12M.

Members group into samples as the ``webdataset`` library groups them (``tariterators``): a member's key is its
name up to the first ``.`` of its base name (``dir/000001.jpg``: ``dir/000001``), its extension the rest
(``a.b.c.json``: ``b.c.json``), compared lowercase; consecutive members with the same key are one sample, so a key
that comes back later is another sample (and row). Members the library puts in no sample are skipped here too: a
name without an extension, a metadata name (``__name__`` and ``__folder__/...``, by the library's pattern). Where
this reader differs, and why:

- a base name that starts with ``.`` is skipped at any depth (``._0001.jpg``, what macOS tar adds); the library
  skips it only at the top level, and below a folder makes it a sample keyed ``folder/``;
- a directory, link, device or FIFO member is skipped, as the library skips every member that is not a regular
  file, unless its extension is one the row reads (an image extension, the text's, ``json`` when used): then its
  sample gets ``directory`` or ``not_a_file`` instead of a silent ``missing_file`` / ``null_text``;
- two members of one sample with an extension the row reads give that row ``duplicate_member`` (the library
  raises, ending the whole run; with a skipping handler it keeps the first); other duplicates are ignored;
- a shard that stops being a valid tar part-way (a bad header, garbage, a second tar appended after the
  end-of-archive marker) gives one ``corrupt_shard`` row after the samples before it; the library's ``tarfile``
  stops there silently, or raises. A member the file ends inside gives its sample ``undecodable``.
- a text member's UTF-8 BOM is dropped (as from a CSV); ``__shard__`` is the library's ``__url__``;
- compressed shards (``.tar.gz``) are not read: shards are plain ``.tar``, found by that suffix.

Local paths only: object-store URIs and ``pipe:`` URLs are refused, not opened.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..contract import errors
from ..contract.constants import MAX_MEMBER_BYTES, WDS_IMAGE_EXT, WDS_TEXT
from ..contract.errors import InputError
from ..contract.rows import ABSENT, IMAGE_KEY, TEXT_KEY, is_utf8
from .schema import ColumnKinds, as_json_text
from .tables import Chunk, batched, loads_json
from .tarshards import KEY_COLUMN, SHARD_COLUMN, SUFFIX, expand_braces, find_tar_shards, is_webdataset, unreadable_shard
from .tarstream import UNREADABLE_FILE, Entry, TarStream

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["KEY_COLUMN", "SHARD_COLUMN", "WdsOptions", "WdsReader", "expand_braces", "find_tar_shards",
           "is_webdataset"]

_META = re.compile(r"__[^/]*__($|/)")  # the library's metadata names, skipped
_BUFFER = 1 << 20


# -- options -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WdsOptions:
    """What a row takes from a sample.

    ``image_ext``: the image member's extensions in priority order: a sample holding ``jpg`` and ``png`` members
    is scored on the ``jpg`` (as ``webdataset``'s ``to_tuple("jpg;png")`` picks the first alternative present),
    whatever their order in the tar. ``text``: the extension of the member holding the caption (decoded as UTF-8),
    or ``"json:<field>"`` for a field of the ``json`` member (``json:caption``, ``json:meta.caption``: dots walk
    into objects). ``keep``: fields of the ``json`` member copied to the output as columns, values as parsed
    (dotted too). Extensions are compared lowercase; a leading ``.`` is dropped.

    >>> WdsOptions(image_ext=(".JPG", "png"), text="json:caption").image_ext
    ('jpg', 'png')
    """

    image_ext: tuple[str, ...] = WDS_IMAGE_EXT
    text: str = WDS_TEXT
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.image_ext, str) or not self.image_ext:
            raise InputError(f"image_ext {self.image_ext!r}: give one or more extensions, e.g. ('jpg', 'png')")
        object.__setattr__(self, "image_ext", tuple(_extension(e, "image_ext") for e in self.image_ext))
        _refuse_repeated(self.image_ext, "image_ext")
        if self.text.startswith("json:"):
            _field_path(self.text[len("json:"):], "text")
        else:
            object.__setattr__(self, "text", _extension(self.text, "text"))
            if self.text in self.image_ext:
                raise InputError(f"text {self.text!r} is also an image extension: the caption needs its own member")
        if isinstance(self.keep, str):
            raise InputError(f"keep {self.keep!r}: give a tuple of json fields, e.g. ('url', 'width')")
        object.__setattr__(self, "keep", tuple(_field_path(f, "keep") for f in self.keep))
        _refuse_repeated(self.keep, "keep")

    @property
    def text_ext(self) -> str:
        """The extension of the member the text comes from."""
        return "json" if self.text_field is not None else self.text

    @property
    def text_field(self) -> str | None:
        """The json field the text comes from, or None when it is a member's whole text."""
        return self.text[len("json:"):] if self.text.startswith("json:") else None

    @property
    def data_exts(self) -> frozenset[str]:
        """Extensions of the members (other than images) whose bytes a row needs."""
        return frozenset({self.text_ext} | ({"json"} if self.keep else set()))


def _extension(value: object, option: str) -> str:
    if not isinstance(value, str) or not value.strip(".") or "/" in value or ":" in value:
        raise InputError(f"{option} {value!r} is not a member extension: give e.g. 'jpg' or 'txt' "
                         "(for a json field: text='json:caption')")
    return value.lstrip(".").lower()


def _field_path(value: object, option: str) -> str:
    if not isinstance(value, str) or not all(value.split(".")):
        raise InputError(f"{option} {value!r} is not a json field: give e.g. 'caption' or 'meta.caption'")
    return value


def _refuse_repeated(values: tuple[str, ...], option: str) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise InputError(f"{option} names {repeated[0]!r} more than once: name each once")


# -- grouping ------------------------------------------------------------------------------------------------------
def member_key_ext(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a member as the ``webdataset`` library splits it (the extension lowercase), or None
    for a member it puts in no sample (no extension, a metadata name) or that is hidden (a base name starting with
    ``.``).

    >>> [member_key_ext(name) for name in ("dir/000001.JPG", "a.b.c.json", "README", "__meta__/x.json")]
    [('dir/000001', 'jpg'), ('a', 'b.c.json'), None, None]
    """
    if _META.match(name):
        return None
    folder, sep, base = name.rpartition("/")
    if base.startswith(".") or "." not in base:
        return None
    stem, _, ext = base.partition(".")
    return folder + sep + stem, ext.lower()


class _Sample:
    """The members of one sample that its row needs, gathered as the tar streams by: the best image (its bytes
    only when asked for), the text and json members' bytes, and what went wrong."""

    __slots__ = ("key", "image", "image_rank", "image_data", "members", "data", "duplicate", "truncated", "too_large")

    def __init__(self, key: str):
        self.key = key
        self.image: Entry | None = None
        self.image_rank = 0
        self.image_data: bytes | None = None
        self.members: dict[str, Entry] = {}  # extension -> member, of the extensions the row reads
        self.data: dict[str, bytes] = {}
        self.duplicate: tuple[str, Entry] | None = None
        self.truncated: Entry | None = None
        self.too_large: Entry | None = None  # a member to read larger than MAX_MEMBER_BYTES: left unread

    def add(self, entry: Entry, ext: str, opts: WdsOptions, stream: TarStream, images: bool) -> None:
        if entry.truncated_at is not None:
            self.truncated = entry
        if ext in self.members:
            self.duplicate = self.duplicate or (ext, entry)
            return
        self.members[ext] = entry
        readable = entry.is_file and entry.truncated_at is None and entry.size <= MAX_MEMBER_BYTES
        if ext in opts.image_ext:
            rank = opts.image_ext.index(ext)
            if self.image is None or rank < self.image_rank:
                self.image, self.image_rank = entry, rank
                self.image_data = stream.read(entry) if images and readable else None
        elif readable:
            self.data[ext] = stream.read(entry)
        elif entry.is_file and entry.size > MAX_MEMBER_BYTES:
            self.too_large = self.too_large or entry


def samples_of(stream: TarStream, opts: WdsOptions, images: bool) -> Iterator[_Sample]:
    """The samples of one shard, in order; image bytes are read only when ``images``."""
    uses = set(opts.image_ext) | opts.data_exts
    sample: _Sample | None = None
    for entry in stream.entries():
        split = member_key_ext(entry.name)
        if split is None:
            continue
        key, ext = split
        if ext not in uses and not entry.is_file:  # the library groups regular members only
            continue
        if sample is None or key != sample.key:
            if sample is not None:
                yield sample
            sample = _Sample(key)
        if ext in uses:
            sample.add(entry, ext, opts, stream, images)
        elif entry.truncated_at is not None:
            sample.truncated = entry
    if sample is not None:
        yield sample


# -- rows ----------------------------------------------------------------------------------------------------------
_Row = tuple[list[Any], str, "bytes | None"]


def wds_columns(image_key: str, text_key: str, keep: tuple[str, ...]) -> list[str]:
    """The columns of WebDataset rows: ``__key__``, ``__shard__``, the image and text columns, the kept fields."""
    return [KEY_COLUMN, SHARD_COLUMN, image_key, text_key, *keep]


class WdsReader:
    """WebDataset shards as a checked input, with the interface the engines use on a ``TableReader``: ``path``
    (the first shard), ``paths``, ``format``, ``columns`` (``__key__``, ``__shard__``, the image and text columns,
    then ``opts.keep``), ``n_rows``, ``sha256`` (of every shard's bytes), ``schema``, :meth:`read_chunks` and
    :meth:`chunks`.

    The image column holds the image member's name, the text column the text, ``__shard__`` the shard path as
    found, ``__key__`` the sample key; each chunk's ``images[i]`` is the image member's bytes (None for a row with
    a reason). The shards are read once up front (counted, hashed, the kept fields' kinds learnt) and once more for
    the chunks, streaming: one sample's members in memory at a time.
    """

    format = SUFFIX

    def __init__(self, location: str | os.PathLike[str] | list[Path], opts: WdsOptions | None = None,
                 image_key: str = IMAGE_KEY, text_key: str = TEXT_KEY, scan: bool = True, name: str | None = None):
        """``location``: a shard, a folder, a glob or brace pattern of them, or a list of shards already found
        (taken as they are: a path that holds ``*`` or ``{`` is no pattern then)."""
        self.opts = opts if opts is not None else WdsOptions()
        self.paths = [Path(p) for p in location] if isinstance(location, list) else find_tar_shards(location)
        self.path = self.paths[0]
        self.columns = wds_columns(image_key, text_key, self.opts.keep)
        repeated = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if repeated:
            raise InputError(f"column {repeated[0]!r} would be both a WebDataset column and an image, text or kept "
                             "one: choose another --image-key / --text-key, or keep other fields")
        self._kinds = ColumnKinds()
        self._name = name  # what rows and reasons call a single shard (default: its path as found)
        self.n_rows, self.sha256 = 0, ""
        if not scan:  # a Ray read task's view of its shard: streamed once, not counted, hashed or typed
            return
        digest = hashlib.sha256()
        for values, _, _ in self._rows(images=False, digest=digest):
            self.n_rows += 1
            self._kinds.add(dict(zip(self.opts.keep, values[4:])))
        self.sha256 = digest.hexdigest()

    @property
    def schema(self) -> pa.Schema:
        """Strings for the four WebDataset columns; the rule of :mod:`.schema` for the kept fields."""
        import pyarrow as pa

        kept = self._kinds.schema(list(self.opts.keep))
        return pa.schema([(c, pa.string()) for c in self.columns[:4]] + list(kept))

    def chunks(self, n: int) -> Iterator[pd.DataFrame]:
        """Consecutive DataFrames of ``n`` rows (the last may be shorter)."""
        for chunk in self.read_chunks(n, images=False):  # the image members are skipped, not read
            yield chunk.frame

    def read_chunks(self, n: int, images: bool = True) -> Iterator[Chunk]:
        """``n`` rows at a time, with each row's reason (``""`` when it can be scored) and image bytes (None
        without ``images``)."""
        if n < 1:
            raise ValueError(f"chunk size must be >= 1, got {n}")
        for group in batched(self._rows(images=images), n):
            frame = pd.DataFrame({c: [values[i] for values, _, _ in group] for i, c in enumerate(self.columns)},
                                 dtype=object, columns=self.columns)
            yield Chunk(frame, [reason for _, reason, _ in group], [image for *_, image in group])

    def _rows(self, images: bool, digest: Any = None) -> Iterator[_Row]:
        for path in self.paths:
            if digest is None:
                yield from self._shard_rows(path, images, None)
                continue
            shard_digest = hashlib.sha256()  # one per shard: moving bytes from one shard to the next is a change
            yield from self._shard_rows(path, images, shard_digest)
            digest.update(shard_digest.digest())

    def _shard_rows(self, path: Path, images: bool, digest: Any) -> Iterator[_Row]:
        shard = self._name or str(path)
        try:
            with open(path, "rb", buffering=_BUFFER) as file:
                stream = TarStream(file, os.fstat(file.fileno()).st_size, digest)
                for sample in samples_of(stream, self.opts, images):
                    yield sample_row(sample, shard, self.opts)
                if stream.stop is not None:
                    reason = (f"{errors.CORRUPT_SHARD}: {shard!r} is not a valid tar from byte {stream.stop.offset} "
                              f"on: {stream.stop.why}")
                    yield [None, shard, None, None, *[ABSENT] * len(self.opts.keep)], reason, None
                stream.finish()
        except OSError as exc:
            raise unreadable_shard(shard, exc) from None


def sample_row(sample: _Sample, shard: str, opts: WdsOptions) -> _Row:
    """A sample's cells (in column order), its reason and its image bytes (None when it has a reason)."""
    where = f"sample {sample.key!r} in {shard!r}"
    parsed, json_reason = _json(sample, shard, where) if "json" in opts.data_exts else (None, "")
    text, text_reason = _text(sample, shard, where, opts, parsed, json_reason)
    kept = [_field(parsed, path) for path in opts.keep]
    reason = (_truncated(sample, shard) or _bad_name(sample, shard) or _duplicate(sample, where)
              or _too_large(sample, shard) or _image_reason(sample, shard, where, opts) or text_reason)
    image = sample.image.name if sample.image is not None else None
    return [sample.key, shard, image, text, *kept], reason, None if reason else sample.image_data


def _truncated(sample: _Sample, shard: str) -> str:
    entry = sample.truncated
    if entry is None or entry.truncated_at is None:
        return ""
    return (f"{errors.UNDECODABLE}: member {entry.name!r} of {shard!r} is truncated at byte {entry.truncated_at} "
            f"(the shard ends {entry.truncated_at - entry.data_offset} bytes into its {entry.size})")


def _too_large(sample: _Sample, shard: str) -> str:
    image = sample.image
    if image is not None and image.is_file and image.truncated_at is None and image.size > MAX_MEMBER_BYTES:
        entry, code = image, errors.TOO_MANY_PIXELS
    elif sample.too_large is not None:
        entry, code = sample.too_large, errors.BAD_TEXT
    else:
        return ""
    return (f"{code}: member {entry.name!r} of {shard!r} is {entry.size} bytes, more than the {MAX_MEMBER_BYTES} "
            "a member may be; it was not read")


def _bad_name(sample: _Sample, shard: str) -> str:
    if is_utf8(sample.key):
        return ""
    return f"{errors.BAD_ENCODING}: the name of sample {sample.key!r} in {shard!r} is not valid UTF-8"


def _duplicate(sample: _Sample, where: str) -> str:
    if sample.duplicate is None:
        return ""
    ext, entry = sample.duplicate
    return (f"{errors.DUPLICATE_MEMBER}: {where} has more than one {ext!r} member (again at byte {entry.offset}): "
            "which one is meant is unknown")


def _image_reason(sample: _Sample, shard: str, where: str, opts: WdsOptions) -> str:
    entry = sample.image
    if entry is None:
        return f"{errors.MISSING_FILE}: {where} has no {'/'.join(opts.image_ext)} member"
    return _not_a_file(entry, shard)


def _not_a_file(entry: Entry, shard: str, code: str = "") -> str:
    if entry.is_file:
        return ""
    if entry.kind == "directory":
        return f"{code or errors.DIRECTORY}: member {entry.name!r} of {shard!r} is a directory"
    if entry.kind == UNREADABLE_FILE:
        return f"{code or errors.UNREADABLE}: member {entry.name!r} of {shard!r} cannot be read ({entry.why})"
    to = f" to {entry.target!r}" if entry.target else ""
    return f"{code or errors.NOT_A_FILE}: member {entry.name!r} of {shard!r} is a {entry.kind}{to}, not a file"


def _text(sample: _Sample, shard: str, where: str, opts: WdsOptions, parsed: Any, json_reason: str,
          ) -> tuple[str | None, str]:
    """The text cell and its reason: a member's whole text, or a field of the parsed json member."""
    field = opts.text_field
    if field is not None:
        if json_reason:
            return None, json_reason
        value = _field(parsed, field)
        if value is ABSENT:
            return None, f"{errors.NULL_TEXT}: {where}: its json member has no field {field!r}"
        if value is None:
            return None, f"{errors.NULL_TEXT}: {where}: its json field {field!r} is null"
        if not isinstance(value, str):
            return as_json_text(value), (f"{errors.NOT_TEXT}: {where}: its json field {field!r} is not a string: "
                                         f"{type(value).__name__} {value!r:.60}")
        return value, ""
    entry = sample.members.get(opts.text)
    if entry is None:
        return None, f"{errors.NULL_TEXT}: {where} has no {opts.text} member"
    if not entry.is_file:
        return None, _not_a_file(entry, shard, errors.NULL_TEXT)
    return _utf8(sample.data.get(opts.text, b""), entry, shard)


def _utf8(raw: bytes, entry: Entry, shard: str) -> tuple[str, str]:
    """``raw`` as text (a UTF-8 BOM dropped), or, when it is not UTF-8, with its bad bytes as lone surrogates
    and the reason ``bad_encoding``."""
    try:
        return raw.decode("utf-8-sig"), ""
    except UnicodeDecodeError as exc:
        return raw.decode("utf-8", "surrogateescape"), (
            f"{errors.BAD_ENCODING}: member {entry.name!r} of {shard!r} is not valid UTF-8 (byte "
            f"0x{raw[exc.start]:02x} at {exc.start})")


def _json(sample: _Sample, shard: str, where: str) -> tuple[Any, str]:
    """The parsed json member, and the reason a text taken from it would have when it has none."""
    entry = sample.members.get("json")
    if entry is None:
        return None, f"{errors.NULL_TEXT}: {where} has no json member"
    if not entry.is_file:
        return None, _not_a_file(entry, shard, errors.NULL_TEXT)
    text, reason = _utf8(sample.data.get("json", b""), entry, shard)
    if reason:
        return None, reason
    try:
        parsed = loads_json(text)
    except ValueError as exc:
        return None, f"{errors.NULL_TEXT}: member {entry.name!r} of {shard!r} is not valid JSON ({exc})"
    if not isinstance(parsed, dict):
        return None, f"{errors.NULL_TEXT}: member {entry.name!r} of {shard!r} is a JSON {type(parsed).__name__}, " \
                     "not an object"
    return parsed, ""


def _field(parsed: Any, path: str) -> Any:
    """The value at a dotted ``path`` of a parsed json object, or ``ABSENT``.

    >>> _field({"meta": {"caption": "a cat"}}, "meta.caption"), _field({"meta": 1}, "meta.caption")
    ('a cat', <absent>)
    """
    value = parsed
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return ABSENT
        value = value[part]
    return value
