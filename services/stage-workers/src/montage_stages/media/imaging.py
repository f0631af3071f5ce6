"""Local still images: palette compositions drawn with numpy and encoded as PNG with zlib."""

from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np

from montage_stages.media.palette import rgb


def _rng(seed: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))


def _colors(palette: list[str]) -> np.ndarray:
    cols = [rgb(c) for c in palette] or [(40, 40, 80), (200, 120, 80)]
    while len(cols) < 4:
        cols.append(tuple(255 - v for v in cols[len(cols) % len(cols)]))  # type: ignore[arg-type]
    return np.array(cols, dtype=np.float32)


def scene_image(palette: list[str], seed: str, width: int, height: int) -> np.ndarray:
    """A landscape: sky gradient, a glowing sun, layered hills and soft bokeh; (h, w, 3) uint8."""
    rng = _rng(seed)
    c = _colors(palette)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    img = c[0] * (1 - y) + c[1] * y + 0 * x
    sx, sy, sr = rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.4), rng.uniform(0.08, 0.16)
    d = np.sqrt(((x - sx) * width / height) ** 2 + (y - sy) ** 2)
    glow = np.clip(1.0 - d / (sr * 3), 0, 1) ** 2
    img = img * (1 - 0.6 * glow) + c[2] * 0.6 * glow
    img = np.where(d < sr, c[2] * 0.5 + 255 * 0.5, img)
    for layer in range(3):
        base = 0.55 + 0.13 * layer
        amp, freq, phase = rng.uniform(0.03, 0.08), rng.uniform(2, 6), rng.uniform(0, 6.28)
        ridge = base + amp * np.sin(2 * np.pi * freq * x[..., 0] + phase) + 0.02 * np.sin(17 * x[..., 0] + phase)
        shade = c[3] * (0.9 - 0.25 * layer)
        img = np.where((y[..., 0] > ridge)[..., None], shade, img)
    for _ in range(12):
        bx, by, br = rng.uniform(0, 1), rng.uniform(0, 0.6), rng.uniform(0.01, 0.04)
        # only the pixels within br of the centre change: compute on that box alone
        rx = br * height / width
        x0, x1 = max(0, int((bx - rx) * (width - 1))), min(width, int((bx + rx) * (width - 1)) + 2)
        y0, y1 = max(0, int((by - br) * (height - 1))), min(height, int((by + br) * (height - 1)) + 2)
        bd = np.sqrt(((x[:, x0:x1] - bx) * width / height) ** 2 + (y[y0:y1] - by) ** 2)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] + 60 * np.clip(1 - bd / br, 0, 1)
    return np.asarray(np.clip(img, 0, 255), dtype=np.uint8)


def character_image(palette: list[str], seed: str, width: int, height: int) -> np.ndarray:
    """A figure: a rim-lit silhouette (head and shoulders) on a radial gradient; (h, w, 3) uint8."""
    rng = _rng(seed)
    c = _colors(palette)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    aspect = width / height
    r = np.sqrt(((x - 0.5) * aspect) ** 2 + (y - 0.45) ** 2)
    img = c[1] * np.clip(1 - r, 0, 1) + c[0] * np.clip(r, 0, 1)
    cx = 0.5 + rng.uniform(-0.12, 0.12)
    head = np.sqrt(((x - cx) * aspect) ** 2 + ((y - 0.38) * 1.1) ** 2) < 0.13
    body = (((x - cx) * aspect / 0.32) ** 2 + ((y - 0.95) / 0.42) ** 2) < 1.0
    figure = (head | body)[..., 0]
    edge = np.zeros_like(figure)
    edge[:, 2:] |= figure[:, 2:] & ~figure[:, :-2]
    edge[:, :-2] |= figure[:, :-2] & ~figure[:, 2:]
    img = np.where(figure[..., None], c[3] * 0.35, img)
    img = np.where(edge[..., None], c[2] * 0.5 + 127, img)
    return np.asarray(np.clip(img, 0, 255), dtype=np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an (h, w, 3) uint8 image as an RGB PNG."""
    h, w, _ = image.shape
    raw = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    raw[:, 0] = 0  # filter: none
    raw[:, 1:] = image.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )
