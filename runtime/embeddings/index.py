"""The cache index of an embeddings folder: ``DIR/index.sqlite`` maps each sha256 to the part and row of its newest
record and holds a copy of its embedding, so a lookup reads a few B-tree pages and no part, whatever the size of
the folder. (Reading the embeddings from the parts instead, by row group, cost 8 ms per 1,000 random keys in a
store of 10k records, 240 ms at 1M and 550 ms at 10M, D=64: a part's footer and a row group per key. From here:
4 to 10 ms, 10k to 1M. The copy costs 4.2 KB per record at D=768 float32, beside the parts' 3.2 KB.)

Tables: ``parts`` (every part file indexed, by kind and name, in the order indexed; ``rows`` is null for a part
that could not be read), and one table per kind (``images``, ``texts``): ``sha256 BLOB (32 bytes) UNIQUE, part,
row, embedding BLOB`` (the stored dtype's bytes), appended in rowid order. A part is indexed in one transaction
after it is in place, with ``INSERT OR REPLACE`` in row order, so the newest record of a key wins (the older row
is deleted). A crash between the two leaves a part the index does not know: the next writer indexes it when it
opens (:meth:`PartIndex.sync`), and rebuilds a kind from its parts when what is on disk cannot be reconciled in
order (a part gone, or one older than the newest indexed).

A writer's open checks what is cheap (the header, the schema, the last page of each table) and rebuilds an index
that fails, with a warning; ``PRAGMA quick_check`` would read every page (0.3 s for 100k records at D=768, seconds
for millions). Damage deeper in shows at the first lookup or write that reaches it, as one line naming the fix.

WAL journal: readers (other processes) open the file read-only (``mode=ro``) and read while one writer writes.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .errors import InputError, WriteError

log = logging.getLogger(__name__)

INDEX = "index.sqlite"
KINDS = ("images", "texts")
SCHEMA = "1"
_BATCH = 500  # keys per SELECT: below SQLite's oldest limit on parameters (999)

_CREATE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parts (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, rows INTEGER,
                                  UNIQUE (kind, name));
CREATE TABLE IF NOT EXISTS images (id INTEGER PRIMARY KEY, sha256 BLOB NOT NULL UNIQUE, part INTEGER NOT NULL,
                                   row INTEGER NOT NULL, embedding BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS texts (id INTEGER PRIMARY KEY, sha256 BLOB NOT NULL UNIQUE, part INTEGER NOT NULL,
                                  row INTEGER NOT NULL, embedding BLOB NOT NULL);
"""

ReadPart = Callable[[str, str], "tuple[list[bytes], np.ndarray] | None"]
"""``read_part(kind, name)``: a part's rows' sha256 (32 bytes each) and ``(N, D)`` embeddings (the stored dtype),
in row order; None when the part cannot be used (it logs why)."""


class PartIndex:
    """``DIR/index.sqlite`` opened for one writer (:meth:`writer`) or one of many readers (:meth:`reader`)."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn, self.path = conn, path

    @classmethod
    def writer(cls, root: Path, parts: dict[str, list[str]], read_part: ReadPart) -> PartIndex:
        """The index of ``root``, created, checked (an unreadable one is rebuilt, with a warning) and brought up to
        date with ``parts`` (each kind's part names, sorted: the order they were written)."""
        path = root / INDEX
        existed = path.exists()
        if not existed and any(parts.values()):
            log.warning("embeddings index %r is missing: building it from %d parts", str(path),
                        sum(map(len, parts.values())))
        try:
            index = cls._open_writer(path)
        except sqlite3.DatabaseError as exc:
            log.warning("embeddings index %r is unreadable (%s): rebuilding it from the parts", str(path), exc)
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            existed = False
            index = cls._open_writer(path)
        index.sync(parts, read_part, quiet=not existed)
        return index

    @classmethod
    def _open_writer(cls, path: Path) -> PartIndex:
        """Connected and checked; :class:`sqlite3.DatabaseError` for an index to rebuild, :class:`WriteError` for
        one that cannot be written (a full disk, an unwritable folder)."""
        conn = None
        try:
            conn = _connect_writer(path)
            index = cls(conn, path)
            index._check()
            return index
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.OperationalError) and _code(exc) not in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
                raise _write_error(path, exc) from None
            raise

    @classmethod
    def reader(cls, root: Path) -> PartIndex:
        """The index of ``root``, read-only; :class:`InputError` when it is missing or unreadable (a reader cannot
        rebuild it, and a private copy would hold every embedding again: one writer's open rebuilds it for all)."""
        path = root / INDEX
        conn = None
        try:
            conn = _connect_reader(path)
            index = cls(conn, path)
            if index._schema() == SCHEMA:
                return index
            raise sqlite3.DatabaseError(f"index schema {index._schema()!r}, this code reads {SCHEMA!r}")
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            why = "missing" if not path.exists() else f"unreadable ({exc})"
        raise InputError(f"embeddings index {str(path)!r} is {why}: open the folder for writing once "
                         "(EmbeddingStore(folder, identity)) to rebuild it from the parts")

    def _schema(self) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        return row[0] if row else None

    def _check(self) -> None:
        """Tables made, schema as this code writes it, each table's last page readable (a truncated file fails
        there); else :class:`sqlite3.DatabaseError`."""
        with self.conn:
            self.conn.executescript(_CREATE)
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA,))
        if self._schema() != SCHEMA:
            raise sqlite3.DatabaseError(f"index schema {self._schema()!r}, this code writes {SCHEMA!r}")
        for table in ("parts", *KINDS):
            self.conn.execute(f"SELECT max(id) FROM {table}").fetchall()

    def sync(self, parts: dict[str, list[str]], read_part: ReadPart, quiet: bool = False) -> None:
        """Index every part of ``parts`` not indexed yet. If one indexed is gone, or one not indexed sorts before
        the newest indexed, the kind is rebuilt from all its parts (records would otherwise win out of order)."""
        for kind in KINDS:
            on_disk = parts.get(kind, [])
            present = set(on_disk)
            self._forget(kind, set(self.unreadable_parts(kind)) - present)  # removed, as the warning asked
            indexed = [n for n, in self.conn.execute("SELECT name FROM parts WHERE kind = ? ORDER BY id", (kind,))]
            known = set(indexed)
            new = [name for name in on_disk if name not in known]
            gone = sorted(known - present)
            if gone or (new and indexed and new[0] < max(indexed)):
                why = (f"{len(gone)} indexed part(s) are gone ({gone[0]}, ...)" if gone
                       else f"part {new[0]} is older than the newest indexed")
                log.warning("embeddings index %r: %s; rebuilding its %s from %d parts", str(self.path), why, kind,
                            len(on_disk))
                self._clear(kind)
                new = on_disk
            elif new and not quiet:
                log.warning("embeddings index %r did not know %d %s part(s) (a run ended between writing a part and "
                            "indexing it): indexing them", str(self.path), len(new), kind)
            for name in new:
                self.add_part(kind, name, read_part(kind, name))

    def _forget(self, kind: str, names: set[str]) -> None:
        with self.conn:
            self.conn.executemany("DELETE FROM parts WHERE kind = ? AND name = ?", ((kind, n) for n in names))

    def _clear(self, kind: str) -> None:
        with self.conn:
            self.conn.execute(f"DELETE FROM {kind}")
            self.conn.execute("DELETE FROM parts WHERE kind = ?", (kind,))

    def add_part(self, kind: str, name: str, records: tuple[list[bytes], np.ndarray] | None) -> None:
        """Index part ``name`` of ``kind``: its rows' keys and ``(N, D)`` embeddings, in row order (None: a part
        that could not be read, kept in ``parts`` so that it is not read again), in one transaction."""
        keys, embeddings = records if records is not None else ([], None)
        try:
            with self.conn:
                part = self.conn.execute("INSERT INTO parts (kind, name, rows) VALUES (?, ?, ?)",
                                         (kind, name, None if records is None else len(keys))).lastrowid
                self.conn.executemany(f"INSERT OR REPLACE INTO {kind} (sha256, part, row, embedding) VALUES "
                                      "(?, ?, ?, ?)", ((key, part, row, embeddings[row].tobytes())
                                                       for row, key in enumerate(keys)))
        except sqlite3.DatabaseError as exc:  # a full disk (SQLITE_FULL), an index damaged since it was opened
            raise _write_error(self.path, exc) from None

    def unreadable_parts(self, kind: str) -> list[str]:
        """Parts of ``kind`` indexed as unreadable (they hold no keys here)."""
        return [n for n, in self.conn.execute("SELECT name FROM parts WHERE kind = ? AND rows IS NULL", (kind,))]

    def embeddings(self, kind: str, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """``{key: embedding bytes}`` of the keys indexed; the others are left out."""
        return dict(self._select(kind, f"SELECT sha256, embedding FROM {kind} WHERE sha256 IN", keys))

    def known(self, kind: str, keys: Iterable[bytes]) -> set[bytes]:
        """The keys indexed."""
        return {key for key, in self._select(kind, f"SELECT sha256 FROM {kind} WHERE sha256 IN", keys)}

    def _select(self, kind: str, query: str, keys: Iterable[bytes]) -> list[tuple]:
        assert kind in KINDS
        keys = list(keys)
        found: list[tuple] = []
        try:
            for start in range(0, len(keys), _BATCH):
                batch = keys[start:start + _BATCH]
                found += self.conn.execute(f"{query} ({', '.join('?' * len(batch))})", batch).fetchall()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"embeddings index {str(self.path)!r} cannot be read: {exc}; open the folder for "
                             "writing once to rebuild it from the parts") from None
        return found

    def close(self) -> None:
        self.conn.close()


def _connect_writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # a commit is durable at the next checkpoint; a lost one is re-indexed
    # Keys are random: a part's 4096 keys touch as many pages. A larger cache and WAL between checkpoints
    # (64 MiB each, bounded) halve the cost of indexing parts into a store of 1M keys (measured: 19 s -> 9 s).
    conn.execute("PRAGMA cache_size = -65536")
    conn.execute("PRAGMA wal_autocheckpoint = 16384")
    return conn


def _connect_reader(path: Path) -> sqlite3.Connection:
    """Read-only. Where no writer has the index open and the folder cannot be written (a read-only mount), WAL
    cannot make its shared-memory file, so the index is opened as immutable: nothing can change it there."""
    if not path.is_file():
        raise sqlite3.DatabaseError("no such file")
    uri = f"file:{_uri_path(path)}?mode=ro"
    shared = _opened(uri)
    if shared is not None:
        return shared
    log.debug("index %s cannot be opened for shared reading; opening it as immutable", path)
    return sqlite3.connect(f"{uri}&immutable=1", uri=True, check_same_thread=False)


def _opened(uri: str) -> sqlite3.Connection | None:
    """A connection to ``uri`` that has read its schema, or None where SQLite cannot open it so."""
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.OperationalError:
        return None
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:  # garbage, not a database, raises on: the caller rebuilds
        conn.close()
        if isinstance(exc, sqlite3.OperationalError):
            return None
        raise
    return conn


def _uri_path(path: Path) -> str:
    """``path`` quoted for a ``file:`` URI (``?``, ``#`` and ``%`` in a folder name would end or escape it)."""
    from urllib.parse import quote

    return quote(str(path.absolute()), safe="/")


def _code(exc: sqlite3.Error) -> str:
    return getattr(exc, "sqlite_errorname", "") or "SQLITE_ERROR"


def _write_error(path: Path, exc: sqlite3.Error) -> WriteError:
    """One line, as errors.write_error: the path, SQLite's error code (``SQLITE_FULL``: a full disk) and text,
    and for a damaged index the fix."""
    fix = (": remove it (and its -wal, -shm); the next writer rebuilds it from the parts"
           if _code(exc) in ("SQLITE_CORRUPT", "SQLITE_NOTADB") else "")
    return WriteError(f"cannot write {str(path)!r}: [{_code(exc)}] {exc}{fix}")
