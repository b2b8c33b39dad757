"""transformers-format CLIP folders: an HF checkpoint scores as transformers scores it.

Each case builds a random tiny ``CLIPModel`` (vocab 49408, a 248-row text table), saves it the way the Hub's
conversions are saved, exports it with ``longclip-export``'s code, and compares the runtime's scores with
transformers' own ``get_image_features`` / ``get_text_features`` on the spec's preprocessing and the official ids.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch

pytestmark = [needs_torch, pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                              reason="needs transformers (the test extra)")]

TEXTS = [
    "a cat",  # EOT at 3
    " ".join(["a"] * 18),  # EOT at 19, the last position of LongCLIP's first table
    " ".join(["a"] * 19),  # EOT at 20
    "A long caption about a red house with white windows, two bicycles by the fence and a grey cat asleep. " * 2,
    "every word repeats until the caption runs past the limit " * 40,  # truncated: EOT at 247
]
MAX_SCORE_DELTA = 5e-5


def awkward_images():
    """Odd sizes and modes: RGBA, L, P, wide, tall, 1-pixel-high."""
    from PIL import Image

    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 256, (333, 517, 3), dtype=np.uint8), "RGB"),
              Image.fromarray(rng.integers(0, 256, (61, 97, 4), dtype=np.uint8), "RGBA"),
              Image.fromarray(rng.integers(0, 256, (400, 50), dtype=np.uint8), "L"),
              Image.fromarray(rng.integers(0, 256, (1, 300, 3), dtype=np.uint8), "RGB")]
    images.append(images[0].convert("P"))
    return images


def clip_model(act: str = "gelu", eos: int = 49407, seed: int = 0, context: int = 248):
    """A random tiny transformers CLIPModel; LayerNorms and biases perturbed so that no mis-mapped tensor hides."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=96, num_attention_heads=2,
                         num_hidden_layers=2, max_position_embeddings=context, hidden_act=act, eos_token_id=eos,
                         layer_norm_eps=1e-6),
        vision_config=dict(hidden_size=48, intermediate_size=80, num_attention_heads=3, num_hidden_layers=2,
                           image_size=32, patch_size=8, hidden_act=act, layer_norm_eps=1e-5),
        projection_dim=24)
    model = CLIPModel(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2:
                std = 0.02 if "embedding" in name else p[0].numel() ** -0.5
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


def save(model, folder: Path, how: str, dtype: str = "fp32", config_context: int | None = 77) -> Path:
    """Save as the Hub's conversions are: ``safetensors`` (one file), ``sharded``, or ``bin`` (torch.save of the
    state dict); ``config.json`` then says ``config_context`` positions, as the known conversions' configs do."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    model = model.to(dtypes[dtype])
    if how == "bin":  # with the position_ids buffers transformers 4 saved in .bin files
        model.config.save_pretrained(folder)
        state = {**model.state_dict(), "text_model.embeddings.position_ids": torch.arange(248)[None],
                 "vision_model.embeddings.position_ids": torch.arange(17)[None]}
        torch.save(state, folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, max_shard_size="200KB" if how == "sharded" else "10GB")
    if config_context is not None:
        config = json.loads((folder / "config.json").read_text())
        config["text_config"]["max_position_embeddings"] = config_context
        (folder / "config.json").write_text(json.dumps(config))
    model.to(torch.float32)  # the reference transformers scores with: the stored weights, in fp32
    return folder


def transformers_scores(model, images, texts) -> np.ndarray:
    """What transformers computes, on the spec's pixels and the official 248-token ids."""
    import torch

    from longclip.runtime.decode.preprocess import preprocess_images
    from longclip.runtime.decode.tokenizer import tokenize
    from longclip.runtime.model.scoring import l2_normalize, to_score

    size = model.config.vision_config.image_size
    with torch.no_grad():
        img = model.get_image_features(pixel_values=torch.from_numpy(preprocess_images(images, size)))
        txt = model.get_text_features(input_ids=torch.from_numpy(tokenize(texts)))
    # transformers 5 returns an output object (its pooler_output is the projected features), 4 a tensor
    img, txt = (getattr(x, "pooler_output", x).numpy() for x in (img, txt))
    return to_score(l2_normalize(img) @ l2_normalize(txt).T)


def runtime_scores(model_dir: Path, images, texts) -> np.ndarray:
    from longclip.runtime import LongCLIP

    clip = LongCLIP(model_dir, device="cpu")
    from longclip.runtime.model.scoring import to_score

    return to_score(clip.encode_images(images) @ clip.encode_texts(texts).T)


@pytest.mark.parametrize("act, eos, how, dtype", [
    ("gelu", 49407, "safetensors", "fp32"),
    ("quick_gelu", 2, "sharded", "bf16"),
])
def test_hf_checkpoint_scores_as_transformers_scores_it(tmp_path, act, eos, how, dtype, caplog):
    from longclip.export import export_model
    from longclip.runtime.contract.manifest import read_manifest

    model = clip_model(act, eos)
    folder = save(model, tmp_path / "hf", how, dtype)
    (folder / "longclip-text-encoder-only.safetensors").write_bytes((folder / "config.json").read_bytes())
    with caplog.at_level(logging.WARNING):
        export_model(folder, tmp_path / "out")
    assert "max_position_embeddings 77, its position table has 248 rows: using 248" in caplog.text
    images = awkward_images()
    want = transformers_scores(model, images, TEXTS)
    got = runtime_scores(tmp_path / "out", images, TEXTS)
    assert want.shape == (5, 5)
    assert np.max(np.abs(got - want)) <= MAX_SCORE_DELTA
    raw = read_manifest(tmp_path / "out").raw
    assert raw["config"]["text_activation"] == raw["config"]["vision_activation"] == act
    assert raw["config"]["text_heads"] == 2 and raw["config"]["vision_heads"] == 3
    assert raw["config"]["text_layer_norm_eps"] == 1e-6
    assert raw["checkpoint"]["format"] == "transformers-clip"
    assert raw["text"]["pooling"] == ("argmax of input_ids (EOT)" if eos == 2 else "first input_ids == 49407 (EOT)")
    if how == "safetensors":  # once: the console script on files reproduces transformers' scores too
        assert np.max(np.abs(longclip_run_scores(tmp_path, tmp_path / "out", images, TEXTS) - want)) <= MAX_SCORE_DELTA


def longclip_run_scores(tmp_path: Path, model_dir: Path, images, texts) -> np.ndarray:
    """``longclip-run`` over every image x text pair, the images saved as PNG files: ``(images, texts)`` scores."""
    import subprocess
    import sys

    rows = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
        rows += [{"image_path": f"{i}.png", "text": text} for text in texts]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = Path(sys.executable).with_name("longclip-run")
    proc = subprocess.run([str(run), "in.jsonl", "-m", str(model_dir), "-o", "scored.jsonl", "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [r["longclip_score_error"] for r in scored] == [""] * len(rows)
    return np.array([r["longclip_score"] for r in scored]).reshape(len(images), len(texts))


@pytest.mark.parametrize("how, dtype", [("bin", "fp16"), ("bin", "fp32"), ("sharded", "fp16"),
                                        ("safetensors", "bf16")])
def test_every_storage_loads_as_transformers_loads_it(tmp_path, how, dtype):
    """Each layout and stored precision gives the reference transformers' features (the graphs are then held to
    the reference by the parity gate, as the export tests above show end to end)."""
    import torch

    from longclip.export.checkpoint import load_reference
    from longclip.runtime.decode.preprocess import preprocess_images
    from longclip.runtime.decode.tokenizer import tokenize

    model = clip_model("quick_gelu", 2, seed=11)
    ref, used = load_reference(save(model, tmp_path / "hf", how, dtype))
    assert used == tmp_path / "hf"
    pixels = torch.from_numpy(preprocess_images(awkward_images(), 32))
    ids = torch.from_numpy(tokenize(TEXTS))
    with torch.no_grad():
        want_img = getattr(x := model.get_image_features(pixel_values=pixels), "pooler_output", x)
        want_txt = getattr(x := model.get_text_features(input_ids=ids), "pooler_output", x)
        torch.testing.assert_close(ref.encode_image(pixels), want_img, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ref.encode_text(ids), want_txt, rtol=1e-5, atol=1e-5)


def test_first_eot_pooling_is_transformers_pooling_when_ids_repeat_it(tmp_path):
    """Ids with a second EOT (not the tokenizer's, but a caller's): pooled at the first, as transformers does."""
    import torch

    from longclip.export.checkpoint import load_reference

    model = clip_model("gelu", 49407, seed=3)
    folder = save(model, tmp_path / "hf", "safetensors")
    ref, _ = load_reference(folder)
    ids = torch.zeros(1, 30, dtype=torch.int64)
    ids[0, :8] = torch.tensor([49406, 320, 1929, 49407, 320, 49407, 5, 49407])
    with torch.no_grad():
        want = model.get_text_features(input_ids=ids)
        got = ref.encode_text(ids)
    torch.testing.assert_close(got, getattr(want, "pooler_output", want), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """One saved random CLIPModel (safetensors), copied and edited by the refusal tests."""
    return save(clip_model("quick_gelu", 49407, seed=5), tmp_path_factory.mktemp("hf") / "model", "safetensors")


def _edited(hf_folder: Path, tmp_path: Path, edit) -> Path:
    import shutil

    folder = Path(shutil.copytree(hf_folder, tmp_path / "edited"))
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


REFUSALS = {
    "siglip": (lambda c: c.update(model_type="siglip"),
               r"is a transformers 'siglip' model: only CLIP \(model_type 'clip', a CLIPModel\) exports as LongCLIP$"),
    "text-with-projection": (
        lambda c: c.update(model_type="clip_text_model", architectures=["CLIPTextModelWithProjection"]),
        r"holds a text encoder only \(CLIPTextModelWithProjection\): scoring needs both towers; pass a full CLIPModel"),
    "text-model": (lambda c: c.update(architectures=["CLIPTextModel"]), r"holds a text encoder only \(CLIPTextModel\)"),
    "vision-model": (lambda c: c.update(model_type="clip_vision_model", architectures=[]),
                     r"holds an image encoder only"),
    "tanh-gelu": (lambda c: c["text_config"].update(hidden_act="gelu_pytorch_tanh"),
                  r"text_config.hidden_act is 'gelu_pytorch_tanh'; LongCLIP exports quick_gelu or gelu$"),
    "heads": (lambda c: c["vision_config"].update(num_attention_heads=5),
              r"vision_config.num_attention_heads is 5, which does not divide the vision width 48$"),
    "eos": (lambda c: c["text_config"].update(eos_token_id=0),
            r"text_config.eos_token_id is 0; CLIP's tokenizer ends texts with 49407 \(or configs say 2, pooling at "
            r"the largest id\)$"),
}


@pytest.mark.parametrize("edit, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_what_is_not_a_longclip_clip_is_refused_in_one_line(hf_folder, tmp_path, edit, message):
    from longclip.export.checkpoint import load_reference
    from longclip.runtime.contract.errors import CheckpointError

    with pytest.raises(CheckpointError, match=message) as caught:
        load_reference(_edited(hf_folder, tmp_path, edit))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text, message", [
    ("{broken", r"cannot read '.*config.json' \(Expecting property name .*\): download it again$"),
    ("[1, 2]", r"config.json' is not a JSON object: not a transformers config$"),
])
def test_a_damaged_config_json_is_one_line(hf_folder, tmp_path, text, message):
    import shutil

    from longclip.export.checkpoint import load_reference
    from longclip.runtime.contract.errors import CheckpointError

    folder = Path(shutil.copytree(hf_folder, tmp_path / "damaged"))
    (folder / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        load_reference(folder)


def test_a_77_position_clip_is_refused_in_one_line(tmp_path):
    from click.testing import CliRunner

    from longclip.export.cli import main

    folder = save(clip_model("quick_gelu", 2, context=77), tmp_path / "clip77", "safetensors", config_context=None)
    result = CliRunner().invoke(main, [str(folder), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and not (tmp_path / "out").exists()
    assert result.output == (f"longclip-export: error: '{folder}': its text position table has 77 rows: a 77-token "
                             "CLIP, not LongCLIP (248 positions); pass a LongCLIP conversion\n")


def test_a_weight_file_of_a_transformers_folder_alone_names_the_folder(hf_folder):
    from longclip.export.checkpoint import load_reference
    from longclip.runtime.contract.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"model.safetensors' holds transformers CLIP weights: pass the folder "
                                              r"that holds it with its config.json"):
        load_reference(hf_folder / "model.safetensors")


def test_a_preprocessor_config_unlike_the_spec_is_said_in_one_line(hf_folder, tmp_path, caplog):
    from longclip.export.hf import check_preprocessor

    folder = tmp_path / "pre"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.5, 0.5, 0.5],
        "size": {"shortest_edge": 224}, "crop_size": {"height": 32, "width": 32}}))
    with caplog.at_level(logging.WARNING):
        check_preprocessor(folder, 32)
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder / 'preprocessor_config.json'} says image_std [0.5, 0.5, 0.5], size {{'shortest_edge': 224}}; "
        "longclip runs the spec's preprocessing (mean [0.48145466, 0.4578275, 0.40821073], "
        "std [0.26862954, 0.26130258, 0.27577711], size 32)"]
    caplog.clear()
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.48145466, 0.4578275, 0.40821073],
                                                                 "size": 32, "crop_size": 32}))
    check_preprocessor(folder, 32)
    assert caplog.records == []
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": ["x", None, {}], "size": [1]}))
    check_preprocessor(folder, 32)  # hostile values are said, never raised
    assert [r.getMessage().split(" says ")[1].split(";")[0] for r in caplog.records] == [
        "image_mean ['x', None, {}], size [1]"]


def test_a_conversion_that_kept_only_the_first_table_differs_from_20_on(hf_folder, tmp_path):
    """The HF table is used row for row: zeroing rows 20.. changes texts whose EOT is at >= 20 only."""
    import torch

    from longclip.export.checkpoint import load_reference
    from longclip.runtime.decode.tokenizer import tokenize

    ids = torch.from_numpy(tokenize([" ".join(["a"] * 18), " ".join(["a"] * 19)]))  # EOT at 19 and 20
    ref, _ = load_reference(hf_folder)
    assert torch.equal(ref.positional_embedding, ref.positional_embedding_res)
    with torch.no_grad():
        before = ref.encode_text(ids)
        ref.positional_embedding_res[20:] = 0
        after = ref.encode_text(ids)
    assert torch.equal(before[0], after[0]) and not torch.allclose(before[1], after[1])


def test_compare_positions_tells_a_kept_table_from_a_copy_of_the_first(tmp_path, tiny_state, tiny_checkpoint, capsys):
    import torch
    from safetensors.torch import save_file

    from longclip.export.compare_positions import main

    first, res = tiny_state["positional_embedding"], tiny_state["positional_embedding_res"]
    tables = {"kept": torch.cat([first[:20], res[20:]]), "first-only": first.clone(),
              "kept-fp16": torch.cat([first[:20], res[20:]]).half()}
    codes = {}
    for name, table in tables.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "clip"}')
        save_file({"text_model.embeddings.position_embedding.weight": table.contiguous()},
                  folder / "model.safetensors")
        codes[name] = main([str(folder), str(tiny_checkpoint)])
    assert codes == {"kept": 0, "first-only": 1, "kept-fp16": 0}
    out = capsys.readouterr().out
    assert out.count("kept: positions 20-247 are upstream's positional_embedding_res") == 2
    assert out.count("NOT kept") == 1
    assert main([str(tmp_path / "kept"), str(tmp_path / "kept" / "config.json")]) == 2
