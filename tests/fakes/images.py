"""Small real images for the image tests and fakes (made with Pillow, so decoders accept them)."""

from __future__ import annotations

import base64
import io

from PIL import Image


def png(width: int = 4, height: int = 4, color: tuple[int, ...] = (200, 30, 30), *, transparent_box: bool = False,
        mode: str = "RGB") -> bytes:
    """A solid PNG; ``transparent_box``: RGBA with the top-left quarter fully transparent (an OpenAI mask)."""
    if transparent_box:
        img = Image.new("RGBA", (width, height), (0, 0, 0, 255))
        for x in range(width // 2):
            for y in range(height // 2):
                img.putpixel((x, y), (0, 0, 0, 0))
    else:
        img = Image.new(mode, (width, height), color[:len(mode)] if mode != "L" else color[0])
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def b64png(*args, **kwargs) -> str:
    return base64.b64encode(png(*args, **kwargs)).decode()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))
