"""Images and trained runs for the delivery tests (predict, export, serve)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 16
CLASSES = ("red", "green", "blue")


def coloured(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images whose class is a slightly dominant colour (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = (rng.random((n, size, size, 3)) * 120).astype(np.uint8)
    images[np.arange(n), :, :, labels] += 30
    return images, labels


def image_folder(root: Path) -> Path:
    """Image files of many sizes and modes, an .npz, and files that are not images."""
    folder = root / "photos"
    (folder / "more").mkdir(parents=True)
    images, _ = coloured(9, 5, 40)
    rgb = [Image.fromarray(a) for a in images]
    rgb[0].save(folder / "a.png")
    rgb[1].resize((57, 23)).save(folder / "b.jpg", quality=90)
    rgb[2].convert("RGBA").save(folder / "c-rgba.png")
    rgb[3].convert("P").save(folder / "d-palette.gif")
    rgb[4].convert("L").save(folder / "more" / "e-gray.webp")
    rgb[5].resize((5, 7)).save(folder / "more" / "f-tiny.bmp")
    wide = (np.asarray(rgb[6].convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(folder / "g-16bit.png")
    np.savez(folder / "h.npz", x=images[7:9], labels=np.arange(2))
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / ".hidden.png").write_bytes(b"skipped")
    return folder


def make_export(folder: Path) -> Path:
    """The chain at 16 px with random routers, exported with class names and preprocessing."""
    import torch

    from dynroute.data.files import preprocessing
    from dynroute.delivery.export import export_tree
    from dynroute.nn.models import build_model
    from dynroute.policy import Policy
    from helpers.routing import scramble_routing

    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(32, 3, SIZE, SIZE, generator=gen) * torch.rand(32, 1, 1, 1, generator=gen)
    tree = scramble_routing(build_model("chain", num_classes=3, image_size=SIZE), x)
    export_tree(
        tree,
        folder,
        policy=Policy("confidence", 0.4),
        class_names=CLASSES,
        preprocessing=preprocessing(None, SIZE),
    )
    return folder
