"""Every ``model_name`` the spec promises, turned into an exported model folder: one function,
:func:`resolve_model_dir`, behind ``LongCLIP``, ``longclip-run -m`` and ``ImageLongCLIPEvaluator``.

1. An exported folder (has ``manifest.json``): used as it is.
2. A checkpoint file, or a folder holding one (the spec's rule): exported once by ``longclip-export`` in a
   separate process (torch never enters this one) into a cache keyed by the checkpoint's sha256, then reused.
3. A Hugging Face repo id (``BeichenZhang/LongCLIP-L-336px``): an exported folder published there is used as it is;
   a repo holding a checkpoint is exported as in 2 (see :mod:`.hub`).

A name is a path, never a repo id, when its first component exists here or it starts with ``.``, ``/`` or ``~``
(or it is a ``Path``): ``models/tinny`` beside ``models/tiny`` is a typo, not a repo to download.
"""

from __future__ import annotations

import difflib
import fcntl
import importlib.util
import itertools
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from . import hub
from .checkpoints import checkpoint_format, checkpoints_in, not_a_checkpoint, pick_checkpoint
from .constants import CHECKPOINT_SUFFIXES, MANIFEST
from .errors import ModelDirError
from .manifest import sha256_file

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_root() -> Path:
    """``$LONGCLIP_CACHE``, else ``$XDG_CACHE_HOME/longclip``, else ``~/.cache/longclip``."""
    if os.environ.get("LONGCLIP_CACHE"):
        return Path(os.environ["LONGCLIP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "longclip"


EXPORT_MODULES = ("torch", "onnx", "onnxscript")
"""What ``longclip-export`` imports beyond the runtime: the export extra."""


def missing_export_modules() -> list[str]:
    """The export extra's modules this environment lacks (found without importing them)."""
    return [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]


def export_cached(checkpoint: Path, cache: Path | None = None) -> Path:
    """The exported folder for ``checkpoint``, made once under ``cache/exports/<sha256>`` by ``longclip-export``.

    An export already in the cache is used without torch; making one needs the export extra, which is checked
    before anything is said or started.
    """
    digest = sha256_file(checkpoint)
    target = (cache or cache_root()) / "exports" / digest[:32]
    if (target / MANIFEST).is_file():
        return target
    missing = missing_export_modules()
    if missing:
        raise ModelDirError(f"cannot use checkpoint {str(checkpoint)!r} here: exporting it needs the export extra: "
                            f"pip install 'longclip[export]' (missing: {', '.join(missing)}), or run `longclip-export "
                            f"{checkpoint} -o DIR` on a machine with torch and pass DIR")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes asking for the same checkpoint export it once
        if (target / MANIFEST).is_file():
            return target
        log.info("exporting %s once into %s (later runs reuse it)", checkpoint, target)
        cmd = [sys.executable, "-m", "longclip.export.cli", str(checkpoint), "-o", str(target), "--overwrite", "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
            detail = detail.removeprefix("longclip-export: error: ")
            raise ModelDirError(f"cannot use checkpoint {str(checkpoint)!r}: {detail}")
    return target


def is_path(model_name: str | os.PathLike[str]) -> bool:
    """Whether ``model_name`` names a local path, never a Hugging Face repo id: a ``Path``, a name starting with
    ``.``, ``/`` or ``~``, or one whose first component exists here.

    >>> is_path("./models/tiny"), is_path("~/models"), is_path("BeichenZhang/LongCLIP-L-336px")
    (True, True, False)
    """
    if isinstance(model_name, os.PathLike):
        return True
    name = os.fspath(model_name)
    return name.startswith((".", "/", "~", os.sep)) or (bool(name) and Path(Path(name).parts[0]).exists())


def near_names(path: Path, limit: int = 10_000) -> list[str]:
    """Existing paths close to the missing ``path``: its first missing component replaced by the near names
    (``difflib``) among the entries of its deepest existing parent."""
    parent, missing = path.parent, path.name
    while parent != parent.parent and not parent.exists():
        parent, missing = parent.parent, parent.name
    try:
        entries = [p.name for p in itertools.islice(parent.iterdir(), limit)]
    except OSError:
        return []
    return [str(parent / name) for name in difflib.get_close_matches(missing, entries, n=3, cutoff=0.6)]


def _missing(model_name: str | os.PathLike[str]) -> ModelDirError:
    """The error for a name that is no existing folder or file, saying why it was not taken as a repo id."""
    name = os.fspath(model_name)
    near = near_names(Path(name).expanduser())
    fix = "pass an exported folder (longclip-export CHECKPOINT -o DIR), a checkpoint file or a folder holding one"
    if not is_path(model_name):
        what, fix = " here and is not a Hugging Face repo id (org/name)", f"{fix}, or a Hugging Face repo id"
    elif isinstance(model_name, str) and _REPO_ID.match(name):
        what = f", and it is not a Hugging Face repo id: {Path(name).parts[0]!r} exists here, so it names a path"
    else:
        what = ""
    hint = f"did you mean {' or '.join(map(repr, near))}?" if near else fix
    return ModelDirError(f"model {name!r} does not exist{what}; {hint}")


def _local(path: Path, cache: Path | None) -> Path:
    """An existing folder or file: exported folder, checkpoint, or folder holding one."""
    if path.is_dir() and (path / MANIFEST).is_file():
        return path
    if path.is_file():
        if checkpoint_format(path) is None:
            raise ModelDirError(f"model {not_a_checkpoint(path)}, or an exported model folder")
        return export_cached(path, cache)
    if not checkpoints_in(path):
        raise ModelDirError(f"model {str(path)!r} is a folder without {MANIFEST} or a {'/'.join(CHECKPOINT_SUFFIXES)} "
                            "file: pass an exported model folder (longclip-export CHECKPOINT -o DIR), a checkpoint "
                            "file or a folder holding one")
    return export_cached(pick_checkpoint(path), cache)


def _from_hub(repo_id: str, cache: Path | None) -> Path:
    """A repo's exported folder as it is, else its checkpoint exported once; from the cache, else downloaded."""
    snapshot = hub.cached_snapshot(repo_id) or hub.download(repo_id, export_possible=not missing_export_modules())
    if hub.is_exported(snapshot):
        return snapshot
    return export_cached(pick_checkpoint(snapshot), cache)


def resolve_model_dir(model_name: str | os.PathLike[str], cache: Path | None = None) -> Path:
    """An exported model folder for any accepted ``model_name`` (see the module doc); :class:`ModelDirError` or
    :class:`CheckpointError` names the value, what was expected and the fix.

    >>> resolve_model_dir("models/tiny")                        # doctest: +SKIP
    PosixPath('models/tiny')
    """
    name = os.fspath(model_name)
    path = Path(name).expanduser()
    if path.exists():
        return _local(path, cache)
    if is_path(model_name) or not _REPO_ID.match(name):
        raise _missing(model_name)
    return _from_hub(name, cache)
