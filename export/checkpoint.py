"""Find, safely load and check a LongCLIP checkpoint; derive its architecture from tensor shapes."""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from longclip.runtime.contract.constants import CONTEXT_LENGTH
from longclip.runtime.contract.errors import CheckpointError
from longclip.runtime.contract.manifest import sha256_file
from longclip.runtime.model.checkpoints import (
    HF_CONFIG,
    checkpoint_format,
    combined_digest,
    hf_files,
    is_hf_folder,
    not_a_checkpoint,
    pick_checkpoint,
)

from .model import HEAD_WIDTH, LongCLIP, LongCLIPConfig

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "module")
_IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI's archives


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file; a transformers folder (``config.json``) itself; or the file chosen from another folder:
    names containing "longclip" first, then sorted."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist: pass a .pt/.bin/.ckpt file or a folder")
    if is_hf_folder(path):
        return path
    chosen = pick_checkpoint(path)
    log.info("checkpoint: %s", chosen)
    return chosen


def _read(path: Path) -> object:
    """The object in a checkpoint file, chosen by its first bytes (never by its name)."""
    kind = checkpoint_format(path)
    if kind is None:
        raise CheckpointError(not_a_checkpoint(path))
    if kind == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{str(path)!r} is safetensors: pip install safetensors") from None
        return load_file(str(path))
    with warnings.catch_warnings():  # torch warns about pickle protocols; the outcome is what matters here
        warnings.simplefilter("ignore")
        # legacy (non-zip) files cannot be memory-mapped: they are read whole
        return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_error(path: Path, exc: BaseException) -> CheckpointError:
    """Our one line for torch's failure to load ``path``: a refused pickle, a damaged archive, or its first line.

    torch's own ``weights_only`` message advises a load that would run the file's code: it is never passed on.

    >>> print(load_error(Path("evil.pt"), RuntimeError("Weights only load failed. (1) ... Unsupported global: "
    ...                                               "GLOBAL os.system was not an allowed global")))
    'evil.pt' is refused: besides tensors it holds Python objects (os.system) that loading would run; a LongCLIP checkpoint is a state dict of tensors (torch.save(model.state_dict(), path))
    """
    text = _ANSI.sub("", str(exc)).strip()
    name = repr(str(path))
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return CheckpointError(f"{name} is refused: besides tensors it holds Python objects{what} that loading would "
                               "run; a LongCLIP checkpoint is a state dict of tensors (torch.save(model.state_dict(), "
                               "path))")
    if "central directory" in text or "zip archive" in text:
        return CheckpointError(f"{name} is damaged: its zip archive is truncated or corrupt; download or copy it again")
    first = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
    return CheckpointError(f"cannot read {name} as a checkpoint ({first}): download or copy it again, or pass another "
                           "file")


def unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a plain state dict, a ``{"state_dict": ...}`` wrapper and a ``module.`` prefix; keep tensors only."""
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict")
    state = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            state[key.removeprefix("module.")] = value
        elif key not in _IGNORED_KEYS:
            raise CheckpointError(f"{str(path)!r}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return state


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load tensors with ``weights_only=True``: a pickle that carries code is refused, never run."""
    path = Path(path)
    try:
        obj = _read(path)
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises many types for corrupt, truncated or unsafe files
        raise load_error(path, exc) from None
    return unwrap_state_dict(obj, path)


def _shape(state: Mapping[str, torch.Tensor], key: str, path: str) -> tuple[int, ...]:
    if key not in state and any(k.startswith(("text_model.", "vision_model.")) for k in state):
        raise CheckpointError(f"{path!r} holds transformers CLIP weights: pass the folder that holds it with its "
                              f"{HF_CONFIG} (the architecture is read from there)")
    if key not in state:
        sample = ", ".join(sorted(state)[:6])
        raise CheckpointError(f"{path!r} has no {key}: not a LongCLIP state dict (keys: {sample}, ...)")
    return tuple(state[key].shape)


def count_layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Residual blocks under ``prefix`` (``...resblocks.`` or ``...encoder.layers.``): the distinct indices."""
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def derive_config(state: Mapping[str, torch.Tensor], path: str = "checkpoint") -> LongCLIPConfig:
    """Architecture from shapes, as OpenAI's ``build_model`` does (B/16, L/14, L/14-336, any width)."""
    vision_width, _, patch, _ = _shape(state, "visual.conv1.weight", path)
    n_pos = _shape(state, "visual.positional_embedding", path)[0]
    grid = round((n_pos - 1) ** 0.5)
    context = _shape(state, "positional_embedding", path)[0]
    _shape(state, "positional_embedding_res", path)
    if context != CONTEXT_LENGTH:
        raise CheckpointError(f"{path!r}: text context is {context}, LongCLIP's is {CONTEXT_LENGTH}")
    text_width = _shape(state, "ln_final.weight", path)[0]
    for width, tower in ((vision_width, "vision"), (text_width, "text")):
        if width % HEAD_WIDTH:
            raise CheckpointError(f"{path!r}: {tower} width {width} is not a multiple of {HEAD_WIDTH}")
    return LongCLIPConfig(
        embed_dim=_shape(state, "text_projection", path)[1],
        image_size=patch * grid,
        patch_size=patch,
        vision_width=vision_width,
        vision_layers=count_layers(state, "visual.transformer.resblocks."),
        text_width=text_width,
        text_layers=count_layers(state, "transformer.resblocks."),
        context_length=context,
        vocab_size=_shape(state, "token_embedding.weight", path)[0],
    )


def build_reference(state: Mapping[str, torch.Tensor], path: str = "checkpoint",
                    cfg: LongCLIPConfig | None = None) -> LongCLIP:
    """The reference model with ``state`` loaded strictly: every key present, none extra, every shape right.

    ``cfg``: the architecture when shapes alone cannot say it (a transformers config); else derived from them.
    """
    cfg = cfg or derive_config(state, path)
    model = LongCLIP(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or extra or wrong:
        parts = [f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys]
        raise CheckpointError(f"{path!r} does not fit LongCLIP {cfg.variant} ({'; '.join(parts)})")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def load_reference(checkpoint: str | os.PathLike[str]) -> tuple[LongCLIP, Path]:
    """Find, load and check a checkpoint: ``(reference model in eval mode, file or transformers folder used)``."""
    path = find_checkpoint(checkpoint)
    if path.is_dir():
        from .hf import load_hf

        state, cfg = load_hf(path)
        return build_reference(state, str(path), cfg), path
    return build_reference(load_state_dict(path), str(path)), path


def source_record(path: Path) -> dict[str, object]:
    """What was exported, for the manifest's ``checkpoint``: its format, and the sha256 that keys the export cache
    (``runtime.checkpoints.source_digest``); a transformers folder adds each file's sha256 and its config's."""
    if not path.is_dir():
        return {"file": path.name, "sha256": sha256_file(path), "format": "longclip"}
    digests = {p.name: sha256_file(p) for p in hf_files(path)}
    return {"file": path.name, "sha256": combined_digest(digests), "format": "transformers-clip",
            "config_sha256": digests[HF_CONFIG], "files": digests}
