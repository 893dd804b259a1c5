"""The example images offered by `chex serve`: small synthetic chest-X-ray-like drawings.

They are drawn by code (no patient data): a frontal chest with two lung fields,
the mediastinum and heart, ribs, clavicles and a spine. `normal` has nothing
else; `opacity` adds a hazy left lower zone opacity (on the image's right, as
X-rays are viewed) and a wider heart. They show how the app works; a tiny or
real model says nothing true about them.

Regenerate the packaged PNGs with `python -m chexcli.serve.examples`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

EXAMPLES_DIR = Path(__file__).with_name("examples")
#: example name -> (file name, button label, description shown as the button's tooltip)
EXAMPLES = {
    "normal": ("synthetic_normal.png", "normal (synthetic)", "Synthetic frontal chest, nothing added"),
    "opacity": ("synthetic_opacity.png", "opacity (synthetic)",
                "Synthetic frontal chest with a left lower zone opacity"),
}


def draw_example(opacity: bool = False, width: int = 448, height: int = 512, seed: int = 0) -> Image.Image:
    """Draw one synthetic frontal chest radiograph as an 8-bit grayscale image (bright = dense)."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (width, height), 18)
    d = ImageDraw.Draw(img)
    w, h = width, height
    cx = w // 2
    d.ellipse([0.06 * w, 0.05 * h, 0.94 * w, 1.25 * h], fill=120)  # soft tissue of the chest
    d.rectangle([0.36 * w, 0, 0.64 * w, 0.12 * h], fill=120)  # neck
    lung_fill = 52
    d.ellipse([0.16 * w, 0.16 * h, 0.47 * w, 0.86 * h], fill=lung_fill)  # right lung (image left)
    d.ellipse([0.53 * w, 0.16 * h, 0.84 * w, 0.86 * h], fill=lung_fill)  # left lung (image right)
    d.rectangle([0.1 * w, 0.80 * h, 0.9 * w, h], fill=125)  # diaphragm and abdomen
    d.ellipse([0.12 * w, 0.72 * h, 0.49 * w, 0.9 * h], fill=125)  # right hemidiaphragm dome
    d.ellipse([0.51 * w, 0.74 * h, 0.88 * w, 0.92 * h], fill=125)  # left hemidiaphragm dome
    d.rectangle([0.44 * w, 0.1 * h, 0.56 * w, 0.8 * h], fill=150)  # mediastinum
    heart_right = (0.73 if opacity else 0.67) * w
    d.ellipse([0.40 * w, 0.48 * h, heart_right, 0.82 * h], fill=150)  # heart
    bones = Image.new("L", (w, h), 0)  # ribs add density wherever they cross
    for k in range(9):  # posterior ribs: arcs from the spine, up and out, then down the side
        y = (0.15 + 0.07 * k) * h
        for start, end in ((185, 265), (275, 355)):
            ImageDraw.Draw(bones).arc([0.14 * w, y, 0.86 * w, y + 0.3 * h], start, end, fill=35, width=max(2, h // 80))
    img = Image.fromarray(np.clip(np.asarray(img, np.int16) + np.asarray(bones, np.int16), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.line([(0.18 * w, 0.13 * h), (0.46 * w, 0.17 * h)], fill=150, width=max(3, h // 60))  # clavicles
    d.line([(0.54 * w, 0.17 * h), (0.82 * w, 0.13 * h)], fill=150, width=max(3, h // 60))
    d.rectangle([0.475 * w, 0, 0.525 * w, h], fill=165)  # spine
    img = img.filter(ImageFilter.GaussianBlur(radius=h / 120))
    if opacity:  # hazy opacity in the left lower zone
        blob = Image.new("L", (w, h), 0)
        ImageDraw.Draw(blob).ellipse([0.66 * w, 0.6 * h, 0.84 * w, 0.78 * h], fill=60)
        blob = blob.filter(ImageFilter.GaussianBlur(radius=h / 25))
        img = Image.fromarray(np.clip(np.asarray(img, np.int16) + np.asarray(blob, np.int16), 0, 255).astype(np.uint8))
    noise = rng.normal(0.0, 3.0, (h, w))
    return Image.fromarray(np.clip(np.asarray(img, np.float64) + noise, 0, 255).astype(np.uint8), mode="L")


def example_path(name: str) -> Path:
    """Path of the packaged example image `name` (a key of EXAMPLES)."""
    return EXAMPLES_DIR / EXAMPLES[name][0]


def write_examples(folder: Path = EXAMPLES_DIR) -> list[Path]:
    """(Re)draw every example into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, (name, (file_name, *_)) in enumerate(EXAMPLES.items()):
        path = folder / file_name
        draw_example(opacity=name == "opacity", seed=seed).save(path, optimize=True)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_examples():
        print(p, p.stat().st_size, "bytes")
