"""Draw the integration's brand images (custom_components/energykart/brand/) from shapes.

Home Assistant (2026.3 and newer) and HACS show a custom integration's own brand images: a square
icon of 256 px and its 512 px @2x, and a landscape logo 128 px high and its @2x. They are drawn
here, at each size from the same shapes, so the @2x images are sharp and not scaled up.

    .venv/bin/python scripts/brand.py
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

BRAND = Path(__file__).resolve().parent.parent / "custom_components" / "energykart" / "brand"
GREEN = (27, 94, 32, 255)
SUN = (255, 193, 7, 255)
BOLT = (255, 255, 255, 255)
TEXT = (27, 94, 32, 255)


def draw_icon(draw: ImageDraw.ImageDraw, x: float, y: float, size: float) -> None:
    """The icon in the square at (x, y) of side `size`: a sun over a lightning bolt on green."""
    u = size / 256
    draw.rounded_rectangle((x + 8 * u, y + 8 * u, x + 248 * u, y + 248 * u), radius=36 * u, fill=GREEN)
    cx, cy, r = x + 100 * u, y + 78 * u, 38 * u
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=SUN)
    for k in range(8):
        angle = k * math.pi / 4
        inner, outer = r + 12 * u, r + 26 * u
        draw.line(
            (
                cx + inner * math.cos(angle),
                cy + inner * math.sin(angle),
                cx + outer * math.cos(angle),
                cy + outer * math.sin(angle),
            ),
            fill=SUN,
            width=max(1, round(7 * u)),
        )
    bolt = [(176, 110), (128, 170), (158, 170), (122, 232), (190, 152), (160, 152), (186, 110)]
    draw.polygon([(x + px * u, y + py * u) for px, py in bolt], fill=BOLT)


def icon(size: int) -> Image.Image:
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw_icon(ImageDraw.Draw(image), 0, 0, size)
    return image


def logo(height: int) -> Image.Image:
    """The icon followed by the name, on a transparent background."""
    font = ImageFont.load_default(size=round(height * 0.5))
    name = "Energy-Kart"
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), name, font=font)
    width = height + round(height * 0.15) + (right - left) + round(height * 0.1)
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw_icon(draw, 0, 0, height)
    text_y = (height - (bottom - top)) / 2 - top
    draw.text((height + round(height * 0.15), text_y), name, font=font, fill=TEXT)
    return image


def main() -> None:
    BRAND.mkdir(parents=True, exist_ok=True)
    icon(256).save(BRAND / "icon.png", optimize=True)
    icon(512).save(BRAND / "icon@2x.png", optimize=True)
    logo(128).save(BRAND / "logo.png", optimize=True)
    logo(256).save(BRAND / "logo@2x.png", optimize=True)
    for path in sorted(BRAND.glob("*.png")):
        with Image.open(path) as image:
            print(f"{path.name}: {image.size[0]}x{image.size[1]}")


if __name__ == "__main__":
    main()
