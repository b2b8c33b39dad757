"""Regenerate the committed goldens from the reference implementations (not from this package).

- ``tests/goldens/images/*``: small images of awkward sizes, modes and formats (deterministic).
- ``tests/goldens/pixels.npz``: torchvision ``Resize(n, BICUBIC) -> CenterCrop(n) -> ToTensor -> Normalize``
  after ``Image.open(p).convert("RGB")``, as the spec'd operator does.
- ``tests/goldens/tokens.json``: OpenAI CLIP's ``simple_tokenizer`` with LongCLIP's ``tokenize(.., 248, truncate=True)``.

Needs torchvision and clip-anytorch, which do not install beside the export extra's torch; use a separate env:

    python -m venv /tmp/goldens && /tmp/goldens/bin/pip install torch==2.14.1 torchvision==0.29.1 ftfy regex
    /tmp/goldens/bin/pip install --no-deps clip-anytorch==2.6.0
    /tmp/goldens/bin/python scripts/make_goldens.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

GOLDENS = Path(__file__).resolve().parent.parent / "tests" / "goldens"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SIZES = (48, 224)

TEXTS = [
    "a photo of a cat",
    "Hello, world!",
    "A   man\tand a woman\n\nin a car.  ",
    "Fish &amp;amp; chips &lt;3 &#39;quoted&#39;",
    "naïve café, Straße, 東京タワー, Ελληνικά, emoji 😀🐈 and ½ ²",
    "mojibake: schÃ¶n and â€œquotesâ€\x9d",
    "it's we're they've I'm you'll he'd IT'S",
    "numbers 1234567 3.14159 and 2nd/3rd",
    "a literal <|endoftext|> inside and <|startoftext|> too",
    "",
    "   ",
    " ".join(["a"] * 18),
    " ".join(["a"] * 19),
    " ".join(["a"] * 246),
    " ".join(["a"] * 247),
    "The image shows a long, winding road through autumn forests. " * 30,
    "supercalifragilisticexpialidocious " * 60,
]


def _reference_tokenizer():
    spec = importlib.util.find_spec("clip")
    assert spec and spec.submodule_search_locations, "pip install --no-deps clip-anytorch==2.6.0"
    path = Path(spec.submodule_search_locations[0]) / "simple_tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # its package __init__ imports torchvision models; skip it
    return module.SimpleTokenizer()


def longclip_tokenize(tokenizer, text: str, context_length: int = 248) -> list[int]:
    """LongCLIP's ``tokenize`` for one text, truncate=True, without the zero padding."""
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    tokens = [sot] + tokenizer.encode(text) + [eot]
    if len(tokens) > context_length:
        tokens = tokens[:context_length]
        tokens[-1] = eot
    return tokens


def make_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(1234)
    folder.mkdir(parents=True, exist_ok=True)

    def pattern(h: int, w: int, c: int) -> np.ndarray:
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 7 + y * 3 + k * 50) % 256 for k in range(c)], axis=-1)
        return ((base + rng.integers(0, 60, (h, w, c))) % 256).astype(np.uint8)

    made = []

    def save(name: str, image: Image.Image, **kw) -> None:
        image.save(folder / name, **kw)
        made.append(folder / name)

    save("rgb_333x517.png", Image.fromarray(pattern(517, 333, 3)))
    save("rgb_wide_301x100.png", Image.fromarray(pattern(100, 301, 3)))
    save("small_41x97.jpg", Image.fromarray(pattern(97, 41, 3)), quality=90)
    save("rgba_61x45.png", Image.fromarray(pattern(45, 61, 4), "RGBA"))
    save("gray_64x50.png", Image.fromarray(pattern(50, 64, 1)[..., 0], "L"))
    save("la_30x40.png", Image.fromarray(pattern(40, 30, 2), "LA"))
    save("exact_48x48.png", Image.fromarray(pattern(48, 48, 3)))
    save("exact_224x224.png", Image.fromarray(pattern(224, 224, 3)))
    save("odd_crop_49x224.png", Image.fromarray(pattern(224, 49, 3)))
    save("cmyk_80x60.jpg", Image.fromarray(pattern(60, 80, 4), "CMYK"), quality=95)
    frames = [Image.fromarray(pattern(70, 50, 3)).convert("P") for _ in range(2)]
    frames[0].save(folder / "animated_50x70.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    made.append(folder / "animated_50x70.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90; the operator does not transpose, neither do we
    save("exif_rotated_90x40.jpg", Image.fromarray(pattern(40, 90, 3)), exif=exif.tobytes(), quality=90)
    return made


def torchvision_pixels(path: Path, size: int) -> np.ndarray:
    transform = T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])
    with torch.no_grad():
        return transform(Image.open(path).convert("RGB")).numpy()


def main() -> None:
    images = make_images(GOLDENS / "images")
    pixels = {f"{p.name}@{n}": torchvision_pixels(p, n) for p in images for n in SIZES if n == 48 or "224" in p.name
              or "333" in p.name}
    np.savez_compressed(GOLDENS / "pixels.npz", **pixels)
    tokenizer = _reference_tokenizer()
    tokens = [{"text": t, "ids": longclip_tokenize(tokenizer, t)} for t in TEXTS]
    (GOLDENS / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False, indent=1) + "\n")
    print(f"{len(images)} images, {len(pixels)} pixel goldens, {len(tokens)} token goldens -> {GOLDENS}")


if __name__ == "__main__":
    main()
