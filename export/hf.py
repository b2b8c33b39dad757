"""transformers-format CLIP folders (``config.json`` + safetensors, shards or ``pytorch_model.bin``) as LongCLIP.

Community LongCLIP conversions on the Hub are transformers ``CLIPModel``s whose text position table has 248 rows.
The architecture's sizes come from the tensor shapes (as for LongCLIP checkpoints); what shapes cannot say
(heads, activation, LayerNorm epsilon, pooling) comes from ``config.json``, with transformers' own defaults for
what it leaves out. The text context is the table's length whatever the config says: the known conversions keep
``max_position_embeddings: 77`` beside a 248-row table.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from longclip.runtime.contract.constants import CONTEXT_LENGTH, EOT_TOKEN, IMAGE_MEAN, IMAGE_STD, VOCAB_SIZE
from longclip.runtime.contract.errors import CheckpointError
from longclip.runtime.model.checkpoints import HF_CONFIG, hf_files

from .checkpoint import count_layers
from .model import ACTIVATIONS, LongCLIPConfig

log = logging.getLogger(__name__)

# transformers' CLIPTextConfig / CLIPVisionConfig defaults for the fields a config.json may leave out.
_DEFAULTS = {
    "text": {"num_attention_heads": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 49407},
    "vision": {"num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
}
LEGACY_EOS = 2
"""The ``eos_token_id`` of configs from before transformers PR #24773: pooling is then the argmax of the ids."""

_RENAMES = (  # transformers name -> reference name, applied in order to each key
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
)
TEXT_POSITIONS = "text_model.embeddings.position_embedding.weight"


def read_config(folder: Path) -> dict:
    """``config.json`` of a full transformers ``CLIPModel``; one line for anything else."""
    path = folder / HF_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r} ({exc}): download it again") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{str(path)!r} is not a JSON object: not a transformers config")
    model_type, archs = config.get("model_type"), config.get("architectures") or []
    text_only = [a for a in archs if str(a).startswith("CLIPTextModel")] or model_type == "clip_text_model"
    if text_only or model_type == "clip_vision_model":
        what = "a text encoder" if text_only else "an image encoder"
        raise CheckpointError(f"{str(folder)!r} holds {what} only ({', '.join(map(str, archs)) or model_type}): "
                              "scoring needs both towers; pass a full CLIPModel folder or repo")
    if model_type != "clip":
        raise CheckpointError(f"{str(folder)!r} is a transformers {model_type!r} model: only CLIP (model_type "
                              "'clip', a CLIPModel) exports as LongCLIP")
    return config


def load_hf_state(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the weight files (an index's shards, or one file), each loaded ``weights_only``."""
    from .checkpoint import load_state_dict

    state: dict[str, torch.Tensor] = {}
    for path in files:
        if path.name.endswith(".json"):
            continue
        state.update(load_state_dict(path))
    return state


def _sub(config: Mapping, tower: str, key: str) -> object:
    sub = config.get(f"{tower}_config") or {}
    return sub.get(key, _DEFAULTS[tower][key]) if isinstance(sub, dict) else _DEFAULTS[tower][key]


def _shape(state: Mapping[str, torch.Tensor], key: str, folder: Path) -> tuple[int, ...]:
    if key not in state:
        sample = ", ".join(sorted(state)[:6])
        raise CheckpointError(f"{str(folder)!r} has no {key}: not a transformers CLIPModel (keys: {sample}, ...)")
    return tuple(state[key].shape)


def _tower_fields(config: Mapping, tower: str, width: int, folder: Path) -> dict[str, object]:
    heads, act, eps = (_sub(config, tower, k) for k in ("num_attention_heads", "hidden_act", "layer_norm_eps"))
    if act not in ACTIVATIONS:
        raise CheckpointError(f"{str(folder)!r}: {tower}_config.hidden_act is {act!r}; LongCLIP exports "
                              f"{' or '.join(ACTIVATIONS)}")
    if not isinstance(heads, int) or heads < 1 or width % heads:
        raise CheckpointError(f"{str(folder)!r}: {tower}_config.num_attention_heads is {heads!r}, which does not "
                              f"divide the {tower} width {width}")
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise CheckpointError(f"{str(folder)!r}: {tower}_config.layer_norm_eps is {eps!r}, expected a small number > 0")
    return {f"{tower}_heads": heads, f"{tower}_activation": act, f"{tower}_layer_norm_eps": float(eps)}


def _eot_token(config: Mapping, folder: Path) -> int | None:
    eos = _sub(config, "text", "eos_token_id")
    if eos == LEGACY_EOS:
        return None
    if eos != EOT_TOKEN:
        raise CheckpointError(f"{str(folder)!r}: text_config.eos_token_id is {eos!r}; CLIP's tokenizer ends texts "
                              f"with {EOT_TOKEN} (or configs say {LEGACY_EOS}, pooling at the largest id)")
    return EOT_TOKEN


def _context(config: Mapping, state: Mapping[str, torch.Tensor], folder: Path) -> int:
    """The text context: the position table's rows, whatever ``max_position_embeddings`` says (warned)."""
    context = _shape(state, TEXT_POSITIONS, folder)[0]
    if context != CONTEXT_LENGTH:
        raise CheckpointError(f"{str(folder)!r}: its text position table has {context} rows: a {context}-token CLIP, "
                              f"not LongCLIP ({CONTEXT_LENGTH} positions); pass a LongCLIP conversion")
    text_config = config.get("text_config")
    said = text_config.get("max_position_embeddings") if isinstance(text_config, dict) else None
    if said is not None and said != context:
        log.warning("%s: config.json says max_position_embeddings %s, its position table has %d rows: using %d",
                    folder, said, context, context)
    return context


def hf_config(config: Mapping, state: Mapping[str, torch.Tensor], folder: Path) -> LongCLIPConfig:
    """The reference's architecture: sizes from shapes, heads/activation/epsilon/pooling from ``config``."""
    vision_width, _, patch, _ = _shape(state, "vision_model.embeddings.patch_embedding.weight", folder)
    n_pos = _shape(state, "vision_model.embeddings.position_embedding.weight", folder)[0]
    grid = math.isqrt(n_pos - 1)
    vocab, text_width = _shape(state, "text_model.embeddings.token_embedding.weight", folder)
    if vocab != VOCAB_SIZE:
        raise CheckpointError(f"{str(folder)!r}: vocabulary of {vocab} tokens; LongCLIP's tokenizer has {VOCAB_SIZE}")
    if grid * grid + 1 != n_pos:
        raise CheckpointError(f"{str(folder)!r}: {n_pos} image positions is not a square grid plus the class token")
    return LongCLIPConfig(
        embed_dim=_shape(state, "visual_projection.weight", folder)[0],
        image_size=patch * grid,
        patch_size=patch,
        vision_width=vision_width,
        vision_layers=count_layers(state, "vision_model.encoder.layers."),
        text_width=text_width,
        text_layers=count_layers(state, "text_model.encoder.layers."),
        context_length=_context(config, state, folder),
        vocab_size=vocab,
        vision_mlp_width=_shape(state, "vision_model.encoder.layers.0.mlp.fc1.weight", folder)[0],
        text_mlp_width=_shape(state, "text_model.encoder.layers.0.mlp.fc1.weight", folder)[0],
        eot_token=_eot_token(config, folder),
        **_tower_fields(config, "vision", vision_width, folder),
        **_tower_fields(config, "text", text_width, folder),
    )


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def to_reference_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' CLIPModel keys -> the reference's: q/k/v packed into ``in_proj``, projections transposed,
    and the one text position table loaded as both of LongCLIP's tables, so that positions 0-19 and 20-247 are
    that table's rows exactly. Unknown keys pass through for ``build_reference`` to refuse by name."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):  # a buffer older transformers saved: 0..n-1, not a weight
            continue
        if key == TEXT_POSITIONS:
            out["positional_embedding"] = out["positional_embedding_res"] = value
        elif key in ("visual_projection.weight", "text_projection.weight"):
            out["visual.proj" if key.startswith("visual") else "text_projection"] = value.t()
        elif found := re.search(r"\.self_attn\.([qkv])_proj\.(weight|bias)$", key):
            block = _rename(key[: found.start()])
            qkv.setdefault(f"{block}.attn.in_proj_{found.group(2)}", {})[found.group(1)] = value
        else:
            out[_rename(key)] = value
    for key, parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise CheckpointError(f"attention weights incomplete at {key}: have {sorted(parts)} of q, k, v")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _close(got: object, want: tuple[float, ...]) -> bool:
    """Whether ``got`` is the list of numbers ``want`` (to 1e-6); anything else in a config is not."""
    numbers = isinstance(got, list) and len(got) == len(want) and all(
        isinstance(g, (int, float)) and not isinstance(g, bool) for g in got)
    return numbers and all(abs(g - w) <= 1e-6 for g, w in zip(got, want))


def check_preprocessor(folder: Path, image_size: int) -> None:
    """One warning when ``preprocessor_config.json`` disagrees with the spec's preprocessing, which is what runs."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return
    try:
        pre = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s is unreadable; the spec's preprocessing runs (mean %s, std %s, size %d)", path,
                    IMAGE_MEAN, IMAGE_STD, image_size)
        return
    if not isinstance(pre, dict):
        return
    differs = []
    for key, want in (("image_mean", IMAGE_MEAN), ("image_std", IMAGE_STD)):
        got = pre.get(key)
        if got is not None and not _close(got, want):
            differs.append(f"{key} {got}")
    for key in ("size", "crop_size"):
        got = pre.get(key)
        sizes = list(got.values()) if isinstance(got, dict) else [got]
        if got is not None and any(size != image_size for size in sizes):
            differs.append(f"{key} {got}")
    if differs:
        log.warning("%s says %s; longclip runs the spec's preprocessing (mean %s, std %s, size %d)", path,
                    ", ".join(differs), list(IMAGE_MEAN), list(IMAGE_STD), image_size)


def load_hf(folder: Path) -> tuple[dict[str, torch.Tensor], LongCLIPConfig]:
    """A transformers CLIP folder as ``(reference state dict, its config)``: read, checked, converted."""
    config = read_config(folder)
    state = load_hf_state(hf_files(folder))
    cfg = hf_config(config, state, folder)
    check_preprocessor(folder, cfg.image_size)
    return to_reference_state(state), cfg
