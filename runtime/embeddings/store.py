"""Embeddings kept between runs, keyed by content: an :class:`EmbeddingStore` is a folder of parquet parts that
any parquet reader reads as it lies, and a SQLite index for cache lookups.

Layout of ``DIR`` (a contract: other tools read it):

``DIR/model.json``
    ``{"format": "longclip-embeddings", "schema_version": 1, "vision_sha256", "text_sha256", "variant",
    "precision", "embed_dim": D, "dtype": "float32" | "float16"}``: the model whose embeddings these are, written
    when the folder is made. Opening it for another model or dtype is refused.
``DIR/images/part-*.parquet``
    One row per image embedded: ``image_path`` string (the input value as given; for images that come as bytes,
    the sample key), ``resolved_path`` string (null for bytes), ``size`` int64, ``mtime_ns`` int64 (null for
    bytes), ``sha256`` string (64 lowercase hex digits of the file's bytes), ``embedding``
    fixed_size_list<D x float32 (or float16)>, L2-normalized.
``DIR/texts/part-*.parquet``
    ``text`` string, ``sha256`` string (of the text's UTF-8 bytes), ``embedding``.
``DIR/index.sqlite`` (+ ``-wal``, ``-shm``)
    sha256 -> (part, row, embedding) of each key's newest record (:mod:`.embedding_index`): lookups read only
    this. Derived from the parts: rebuilt from them when lost or damaged.

A part holds the records added since the previous part: ``part_rows`` of them (4096 by default), or fewer at
:meth:`EmbeddingStore.flush` / close. Its name ``part-<UTC YYYYmmddTHHMMSSffffff>Z-<pid>-<n>.parquet`` sorts in
write order and never collides with another process's. It is written as ``.part-<...>.parquet.<random>.tmp``,
fsynced, then renamed: never visible half-written; a killed run leaves at most that file, which every reader skips (a
leading dot, no ``.parquet`` suffix); one row group. Each part's schema metadata ``longclip.embeddings`` repeats
model.json.

Embeddings are stored L2-normalized, and ``add_*`` refuses a row whose norm is not 1 within 1e-5 rather than
normalizing it: a caller passing raw model outputs is a bug to be told of, and a stored vector is then one a
cosine needs no further work on.

A key can appear more than once (an image embedded again): the newest record (latest part, then latest row) is
the one the store returns. One row per key in DuckDB::

    SELECT * FROM read_parquet('DIR/images/*.parquet', filename=true, file_row_number=true)
    QUALIFY row_number() OVER (PARTITION BY sha256 ORDER BY filename DESC, file_row_number DESC) = 1

One writer at a time (the folder's lock, :mod:`.lock`, for the store's life); any number of read-only stores
(``write=False``: no lock), in other processes too, read while it writes. A store object is not thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import write_bytes
from .embedding_index import KINDS, PartIndex
from .embedding_parts import (COLUMNS, PartNamer, arrow_errors, part_identity, part_names, part_records, part_table,
                              write_part)
from .errors import InputError, WriteError, write_error
from .lock import OutputLock
from .manifest import sha256_file

if TYPE_CHECKING:
    from .manifest import Manifest

log = logging.getLogger(__name__)

FORMAT = "longclip-embeddings"
SCHEMA_VERSION = 1
MODEL_JSON = "model.json"
DTYPES = ("float32", "float16")
PART_ROWS = 4096
NORM_TOLERANCE = 1e-5

_HEX = re.compile(r"[0-9a-fA-F]{64}")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The key of an image file: the hex sha256 of its bytes (about 30 µs for a 50 KB JPEG, under 1% of decoding
    and resizing it).

    >>> file_sha256(os.devnull)
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    return sha256_file(path)


def bytes_sha256(data: bytes) -> str:
    """The key of an image that comes as bytes (a WebDataset member): the hex sha256 of the bytes.

    >>> bytes_sha256(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(data).hexdigest()


def text_sha256(text: str) -> str:
    """The key of a text: the hex sha256 of its UTF-8 bytes; ``ValueError`` for text UTF-8 cannot hold.

    >>> text_sha256("a cat")[:16]
    '51e4674156077982'
    """
    try:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    except UnicodeEncodeError as exc:
        raise ValueError(f"text {_clip(text)!r} holds {exc.object[exc.start]!r}, which UTF-8 cannot hold: it has no "
                         "sha256 (a run reports such a row as bad_text)") from None


@dataclass(frozen=True)
class StoreIdentity:
    """What the embeddings of a folder depend on: the graphs (by sha256), their precision, the embedding size, and
    the dtype they are stored in. ``variant`` is informational (it follows from the graphs)."""

    vision_sha256: str
    text_sha256: str
    variant: str
    precision: str
    embed_dim: int
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"embeddings dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if isinstance(self.embed_dim, bool) or not isinstance(self.embed_dim, int) or self.embed_dim < 1:
            raise ValueError(f"embed_dim {self.embed_dim!r} is not an integer >= 1")

    @classmethod
    def of(cls, manifest: Manifest, dtype: str = "float32") -> StoreIdentity:
        """The identity of embeddings made by the model of ``manifest``, stored as ``dtype``."""
        return cls(manifest.vision_sha256, manifest.text_sha256, manifest.variant, manifest.precision,
                   manifest.embed_dim, dtype)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> StoreIdentity:
        """``ValueError`` naming the first field that is missing or wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT!r} object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {data.get('schema_version')!r}, this code reads {SCHEMA_VERSION}")
        fields = {name: data.get(name) for name in cls.__dataclass_fields__}
        for name, value in fields.items():
            if not isinstance(value, int if name == "embed_dim" else str):
                raise ValueError(f"{name} is {value!r}")
        return cls(**fields)

    def differences(self, stored: StoreIdentity) -> list[str]:
        """What differs from ``stored`` (variant aside), one phrase each.

        >>> a = StoreIdentity("a" * 64, "b" * 64, "ViT-B/16", "fp32", 512)
        >>> a.differences(StoreIdentity("a" * 64, "b" * 64, "ViT-B/16", "fp16", 512, "float16"))
        ['precision fp32 (the folder: fp16)', 'dtype float32 (the folder: float16)']
        """
        names = {"vision_sha256": "vision graph sha256", "text_sha256": "text graph sha256"}
        return [f"{names.get(name, name)} {_short(getattr(self, name))} (the folder: {_short(getattr(stored, name))})"
                for name in ("vision_sha256", "text_sha256", "precision", "embed_dim", "dtype")
                if getattr(self, name) != getattr(stored, name)]


class EmbeddingStore:
    """The embeddings folder ``root`` (layout: this module's docstring), for one writer (``write=True``, the
    default: the folder and its ``model.json`` are made if missing, and its lock is held until :meth:`close`) or
    for reading (``write=False``: no lock; ``identity`` may be left out to take the folder's).

    >>> with EmbeddingStore("embeddings", StoreIdentity.of(model.manifest)) as store:   # doctest: +SKIP
    ...     cached = store.get_images([file_sha256(p) for p in paths])
    ...     store.add_images(paths, resolved, sizes, mtimes, keys, embeddings)        # (N, D), L2-normalized
    """

    def __init__(self, root: str | os.PathLike[str], identity: StoreIdentity | None = None, *, write: bool = True,
                 part_rows: int = PART_ROWS, shared: bool = False):
        if identity is None and write:
            raise ValueError("a writing EmbeddingStore needs the identity of the model: StoreIdentity.of(manifest)")
        if part_rows < 1:
            raise ValueError(f"part_rows must be >= 1, got {part_rows}")
        # shared: a writer of parts beside the one that holds the lock (a Ray worker): no lock, the index read-only;
        # its parts are indexed by the lock holder's refresh()
        self.root, self.write, self.part_rows, self.shared = Path(root), write, part_rows, shared
        self._lock: OutputLock | None = None
        self._index: PartIndex | None = None
        self._check_folder()
        try:
            if write and not shared:
                self._lock = OutputLock(self._lock_target(), what="embeddings folder")
                self._lock.acquire()
                self._make_folders()
            self.identity = self._open_identity(identity)
            self._dtype = np.dtype(self.identity.dtype)
            self._pending = {kind: _Pending(COLUMNS[kind]) for kind in KINDS}
            self._skipped: set[Path] = set()
            self._unindexed: list[tuple[str, str, tuple[list[bytes], np.ndarray]]] = []
            parts = self._parts()
            self._namer = PartNamer([name for names in parts.values() for name in names])
            own_index = write and not shared
            self._index = PartIndex.writer(self.root, parts, self._read_part) if own_index else PartIndex.reader(self.root)
            self._warn_unreadable()
        except BaseException:
            self._release()
            raise

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.root)!r}, {'write' if self.write else 'read-only'})"

    # -- opening ------------------------------------------------------------------------------------------------

    def _check_folder(self) -> None:
        where = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"embeddings folder {where!r} is a file: name a folder (a writer makes it if missing)")
        if self.write and self.root.is_dir() and not (self.root / MODEL_JSON).exists() \
                and not any((self.root / kind).is_dir() for kind in KINDS) and any(self.root.iterdir()):
            raise InputError(f"embeddings folder {where!r} holds other files and no {MODEL_JSON}: name a new or "
                             "empty folder, or one a run wrote its embeddings to")
        if not self.root.exists():
            if not self.write:
                raise InputError(f"embeddings folder {where!r} does not exist: name a folder a run wrote")
            if not self.root.absolute().parent.is_dir():
                raise InputError(f"cannot make embeddings folder {where!r}: folder {str(self.root.parent)!r} does "
                                 "not exist")

    def _lock_target(self) -> Path:
        """``root`` as the lock names it: beside the folder (``.`` and ``..`` have no name of their own)."""
        return self.root if self.root.name not in ("", "..") else Path(os.path.abspath(self.root))

    def _make_folders(self) -> None:
        for folder in (self.root, *(self.root / kind for kind in KINDS)):
            try:
                folder.mkdir(exist_ok=True)
            except OSError as exc:
                raise write_error(folder, exc, ": check its permissions, or read it with write=False") from None

    def _open_identity(self, wanted: StoreIdentity | None) -> StoreIdentity:
        """The folder's identity, checked against ``wanted``; a writer writes ``model.json`` when it is missing or
        unreadable and the parts agree with ``wanted`` (they repeat it)."""
        path = self.root / MODEL_JSON
        stored, problem = _read_identity(path)
        if stored is None:
            stored = self._identity_of_parts()
            problem = problem or ("missing" if stored else "")
            if stored is None and problem and (not self.write or self._has_parts()):
                raise InputError(f"embeddings folder {str(self.root)!r}: {MODEL_JSON} is {problem}, and no part says "
                                 "which model made the embeddings: restore it, or move the folder away and start "
                                 "a new one")
            if stored is None and not self.write:
                raise InputError(f"{str(self.root)!r} is not an embeddings folder (no {MODEL_JSON}): name the "
                                 "folder a run wrote its embeddings to")
        if wanted is not None and stored is not None and (diff := wanted.differences(stored)):
            raise InputError(f"embeddings folder {str(self.root)!r} holds embeddings of another model or dtype: "
                             f"{'; '.join(diff)}: use another folder for this model, or move it away")
        identity = wanted or stored
        assert identity is not None
        if self.write and (problem or not path.exists()):
            if problem:
                log.warning("embeddings folder %r: %s is %s: written again from the model%s", str(self.root),
                            MODEL_JSON, problem, " (its parts agree)" if stored else "")
            self._write_model_json(path, identity)
        return identity

    def _write_model_json(self, path: Path, identity: StoreIdentity) -> None:
        try:
            write_bytes(path, (json.dumps(identity.to_json(), indent=2) + "\n").encode(), durable=True)
        except OSError as exc:
            raise write_error(path, exc) from None

    def _parts(self) -> dict[str, list[str]]:
        return {kind: part_names(self.root / kind) for kind in KINDS}

    def _has_parts(self) -> bool:
        return any(self._parts().values())

    def _identity_of_parts(self) -> StoreIdentity | None:
        """The identity the newest readable part records, if any."""
        for kind, names in self._parts().items():
            for name in reversed(names):
                try:
                    return StoreIdentity.from_json(part_identity(self.root / kind / name))
                except arrow_errors():
                    continue
        return None

    def _read_part(self, kind: str, name: str) -> tuple[list[bytes], np.ndarray] | None:
        """A part's keys and embeddings, for the index; None (with a warning) for a part that cannot be used."""
        path = self.root / kind / name
        try:
            recorded, keys, embeddings = part_records(path)
            if self.identity.differences(StoreIdentity.from_json(recorded)) or embeddings.dtype != self._dtype:
                raise ValueError("it holds embeddings of another model or dtype")
            return keys, embeddings
        except arrow_errors() as exc:
            self._skipped.add(path)
            log.warning("embeddings part %r cannot be used (%s): skipped; move it out of %r (DuckDB and pandas "
                        "reading the folder fail on a corrupt part)", str(path), _clip(str(exc), 200),
                        str(path.parent))
            return None

    def _warn_unreadable(self) -> None:
        """Parts found unusable by an earlier open, still there: said again on each open."""
        assert self._index is not None
        for kind in KINDS:
            for name in self._index.unreadable_parts(kind):
                if self.root / kind / name not in self._skipped:
                    log.warning("embeddings part %r could not be used when it was indexed: it is skipped; move it "
                                "out of the folder", str(self.root / kind / name))

    # -- adding -------------------------------------------------------------------------------------------------

    def add_image(self, image_path: str, resolved_path: str | None, size: int, mtime_ns: int | None, sha256: str,
                  embedding: np.ndarray) -> None:
        """Add one image's record; ``embedding``: ``(D,)``, L2-normalized. See :meth:`add_images`."""
        self.add_images([image_path], [resolved_path], [size], [mtime_ns], [sha256], np.asarray(embedding)[None])

    def add_images(self, image_paths: Sequence[str], resolved_paths: Sequence[str | None], sizes: Sequence[int],
                   mtime_ns: Sequence[int | None], sha256s: Sequence[str], embeddings: np.ndarray) -> None:
        """Add N images' records (``embeddings``: ``(N, D)``, each row of L2 norm 1 within 1e-5, else
        ``ValueError``). They are visible to this store's lookups at once, and written as parts of ``part_rows``;
        a part that cannot be written is a :class:`WriteError` (its records stay pending)."""
        rows = {"image_path": [_string(v, "image_path") for v in image_paths],
                "resolved_path": [None if v is None else _string(v, "resolved_path") for v in resolved_paths],
                "size": [_integer(v, "size") for v in sizes],
                "mtime_ns": [None if v is None else _integer(v, "mtime_ns") for v in mtime_ns],
                "sha256": [_sha256(v) for v in sha256s]}
        self._add("images", rows, embeddings)

    def add_text(self, text: str, sha256: str, embedding: np.ndarray) -> None:
        """Add one text's record (``sha256``: :func:`text_sha256` of it; ``embedding``: ``(D,)``)."""
        self.add_texts([text], [sha256], np.asarray(embedding)[None])

    def add_texts(self, texts: Sequence[str], sha256s: Sequence[str], embeddings: np.ndarray) -> None:
        """Add N texts' records; as :meth:`add_images`."""
        self._add("texts", {"text": [_string(v, "text") for v in texts], "sha256": [_sha256(v) for v in sha256s]},
                  embeddings)

    def _add(self, kind: str, rows: dict[str, list[Any]], embeddings: np.ndarray) -> None:
        self._open_for_writing()
        n = len(rows["sha256"])
        if any(len(values) != n for values in rows.values()):
            raise ValueError(f"{kind}: columns of different lengths: "
                             + ", ".join(f"{c} {len(v)}" for c, v in rows.items()))
        block = self._checked(embeddings, rows["sha256"])
        start = 0
        while start < n:
            pending = self._pending[kind]
            take = min(n - start, self.part_rows - pending.rows)
            pending.add({c: v[start:start + take] for c, v in rows.items()}, block[start:start + take])
            start += take
            if pending.rows >= self.part_rows:
                self._write_part(kind)

    def _checked(self, embeddings: np.ndarray, keys: list[str]) -> np.ndarray:
        """``embeddings`` as a new ``(N, D)`` array of the stored dtype, once each row is known to be unit norm."""
        e = np.asarray(embeddings, dtype=np.float32)
        dim = self.identity.embed_dim
        if e.shape != (len(keys), dim):
            raise ValueError(f"embeddings of shape {e.shape}, expected ({len(keys)}, {dim}): one row of the model's "
                             f"embed_dim ({dim}) per record")
        norms = np.linalg.norm(e, axis=1)
        bad = ~(np.abs(norms - 1.0) <= NORM_TOLERANCE)  # NaN is bad too
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"embedding of sha256 {keys[i]} has L2 norm {norms[i]:.7g}, expected 1 within "
                             f"{NORM_TOLERANCE:g}: pass L2-normalized embeddings (scoring.l2_normalize)")
        return np.array(e, dtype=self._dtype)  # a copy: the caller may reuse its buffer

    def _write_part(self, kind: str) -> None:
        """The pending records of ``kind`` as a new part, moved into place whole, then indexed."""
        pending = self._pending[kind]
        dim = self.identity.embed_dim
        embeddings = np.concatenate(pending.blocks) if pending.blocks else np.empty((0, dim), self._dtype)
        name = self._namer.next()
        write_part(self.root / kind / name, part_table(kind, pending.columns, embeddings, self.identity.to_json()))
        self._pending[kind] = _Pending(COLUMNS[kind])  # in a part now, whatever the index does
        if not self.shared:
            self._unindexed.append((kind, name, (pending.keys, embeddings)))
            self._index_parts()

    def _index_parts(self) -> None:
        """Index the parts written and not indexed yet, oldest first. A full disk can refuse the index once a part
        is in place: the part waits here (its records are misses meanwhile) for the next flush, close or open."""
        assert self._index is not None
        while self._unindexed:
            kind, name, records = self._unindexed[0]
            try:
                self._index.add_part(kind, name, records)
            except WriteError as exc:
                raise WriteError(f"{exc}: part {name} is in place, and is indexed at the next flush(), close() or "
                                 "open") from None
            self._unindexed.pop(0)

    def flush(self) -> None:
        """Index the parts not indexed yet, then write the pending records (of each kind) as parts."""
        self._open_for_writing()
        if not self.shared:
            self._index_parts()
        for kind in KINDS:
            if self._pending[kind].rows:
                self._write_part(kind)

    # -- looking up ---------------------------------------------------------------------------------------------

    def get_images(self, sha256s: Iterable[str]) -> dict[str, np.ndarray]:
        """``{sha256: (D,) float32}`` of the images cached (newest record of each key); the others are left out."""
        return self._get("images", sha256s)

    def get_texts(self, sha256s: Iterable[str]) -> dict[str, np.ndarray]:
        """``{sha256: (D,) float32}`` of the texts cached; as :meth:`get_images`."""
        return self._get("texts", sha256s)

    def has_images(self, sha256s: Iterable[str]) -> set[str]:
        """The sha256s of ``sha256s`` cached (cheaper than :meth:`get_images`: no embedding is read)."""
        return self._has("images", sha256s)

    def has_texts(self, sha256s: Iterable[str]) -> set[str]:
        """The sha256s of ``sha256s`` cached; as :meth:`has_images`."""
        return self._has("texts", sha256s)

    def _has(self, kind: str, sha256s: Iterable[str]) -> set[str]:
        keys, index = _keys(sha256s), self._open_index()
        pending = self._pending[kind]
        hit = {key for key in keys if key in pending.where}
        hit |= index.known(kind, [key for key in keys if key not in hit])
        return {given for key in hit for given in keys[key]}

    def _get(self, kind: str, sha256s: Iterable[str]) -> dict[str, np.ndarray]:
        keys, index = _keys(sha256s), self._open_index()
        pending = self._pending[kind]
        found = {key: pending.get(key).astype(np.float32) for key in keys if key in pending.where}
        size = self.identity.embed_dim * self._dtype.itemsize
        stored = {key: blob for key, blob in index.embeddings(kind, [k for k in keys if k not in found]).items()
                  if len(blob) == size}  # any other length is not this folder's: a miss
        if stored:
            matrix = np.frombuffer(b"".join(stored.values()), self._dtype).reshape(len(stored), -1)
            found.update(zip(stored, matrix.astype(np.float32)))
        return {given: found[key] for key, names in keys.items() if key in found for given in names}

    # -- closing ------------------------------------------------------------------------------------------------

    def _open_index(self) -> PartIndex:
        if self._index is None:
            raise ValueError(f"{self!r} is closed")
        return self._index

    def _open_for_writing(self) -> None:
        self._open_index()
        if not self.write:
            raise InputError(f"embeddings folder {str(self.root)!r} is open read-only: open it with write=True to "
                             "add records")

    def refresh(self) -> None:
        """Index the parts that other writers (``shared`` stores: Ray workers) put in the folder meanwhile."""
        self._open_for_writing()
        assert self._index is not None and not self.shared
        self.flush()
        self._index.close()
        self._index = PartIndex.writer(self.root, self._parts(), self._read_part)

    def close(self) -> None:
        """Write what is pending, close the index, release the folder's lock; a second call does nothing."""
        if self._index is None:
            return
        try:
            if self.write:
                self.flush()
        finally:
            self._release()

    def _release(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
            return
        try:  # the records added before the error are good: keep them if the disk lets us
            self.close()
        except Exception as late:  # noqa: BLE001 - the first error is the one to report
            log.warning("embeddings folder %r: pending records not written: %s", str(self.root), late)


class _Pending:
    """The records of one kind added since the last part: columns as lists, embeddings as blocks of the stored
    dtype, and where each key's newest record is, for lookups before the part is written."""

    def __init__(self, columns: tuple[str, ...]):
        self.columns: dict[str, list[Any]] = {c: [] for c in columns}
        self.blocks: list[np.ndarray] = []
        self.where: dict[bytes, tuple[int, int]] = {}
        self.keys: list[bytes] = []
        self.rows = 0

    def add(self, values: dict[str, list[Any]], block: np.ndarray) -> None:
        for column, items in values.items():
            self.columns[column].extend(items)
        for row, key in enumerate(values["sha256"]):
            self.keys.append(raw := bytes.fromhex(key))
            self.where[raw] = (len(self.blocks), row)
        self.blocks.append(block)
        self.rows += len(block)

    def get(self, key: bytes) -> np.ndarray:
        block, row = self.where[key]
        return self.blocks[block][row]


def _read_identity(path: Path) -> tuple[StoreIdentity | None, str]:
    """``(identity, "")``, ``(None, "")`` when there is no file, or ``(None, what is wrong)``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, ""
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({getattr(exc, 'strerror', None) or exc})"
    try:
        return StoreIdentity.from_json(json.loads(text)), ""
    except (ValueError, RecursionError) as exc:
        return None, f"not valid ({_clip(str(exc), 120)})"


def _keys(sha256s: Iterable[str]) -> dict[bytes, list[str]]:
    """The 32-byte key of each sha256 given, with the spellings it was given in."""
    keys: dict[bytes, list[str]] = {}
    for given in sha256s:
        keys.setdefault(bytes.fromhex(_sha256(given)), []).append(given)
    return keys


def _sha256(value: object) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise ValueError(f"sha256 {_clip(repr(value))} is not 64 hex digits: pass file_sha256(path), "
                         "bytes_sha256(data) or text_sha256(text)")
    return value.lower()


def _string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} {_clip(repr(value))} is not a string")
    return value


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not -(2**63) <= value < 2**63:
        raise ValueError(f"{name} {_clip(repr(value))} is not an integer that int64 holds")
    return int(value)


def _short(value: object) -> str:
    text = str(value)
    return f"{text[:12]}..." if len(text) > 16 else text


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit - 3]}..."
