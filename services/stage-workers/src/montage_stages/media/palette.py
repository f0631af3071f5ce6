"""Deterministic colour palettes from a prompt's words and the song's mood."""

from __future__ import annotations

import colorsys
import hashlib
import re

from montage_contracts.models import Mood

# Hues (0..1) named in prompts override the hashed base hue.
_HUE_WORDS: dict[str, float] = {
    "red": 0.0, "fire": 0.03, "sunset": 0.06, "orange": 0.08, "autumn": 0.08, "gold": 0.12,
    "desert": 0.11, "yellow": 0.15, "sun": 0.14, "green": 0.33, "forest": 0.3, "jungle": 0.32,
    "teal": 0.48, "ocean": 0.55, "sea": 0.55, "water": 0.55, "rain": 0.58, "blue": 0.6, "sky": 0.58,
    "night": 0.66, "space": 0.7, "neon": 0.8, "purple": 0.78, "violet": 0.76, "pink": 0.9,
    "love": 0.95, "rose": 0.95, "city": 0.62, "snow": 0.58, "winter": 0.6,
}  # fmt: skip


def words(prompt: str) -> list[str]:
    return re.findall(r"[a-z']+", prompt.lower())


def palette(prompt: str, mood: Mood, salt: str = "", size: int = 4) -> list[str]:
    """``size`` "#rrggbb" colours: a base hue (from colour words, else a hash of the words) and its
    neighbours and complement; saturation follows arousal, lightness follows valence."""
    ws = words(prompt)
    digest = hashlib.sha256(" ".join([*ws, mood.name, salt]).encode()).digest()
    named = [_HUE_WORDS[w] for w in ws if w in _HUE_WORDS]
    base = named[0] if named else digest[0] / 255
    base = (base + (digest[1] / 255 - 0.5) * 0.06) % 1.0  # a little variation per salt
    sat = 0.35 + 0.55 * mood.arousal
    light = 0.28 + 0.3 * mood.valence
    offsets = [0.0, 0.07, 0.5, -0.07, 0.25, -0.25]
    lights = [light, light + 0.15, light + 0.05, light - 0.12, light + 0.25, light - 0.2]
    out = []
    for k in range(size):
        r, g, b = colorsys.hls_to_rgb((base + offsets[k % 6]) % 1.0, min(0.9, max(0.08, lights[k % 6])), sat)
        out.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return out


def rgb(color: str) -> tuple[int, int, int]:
    """ "#rrggbb" → (r, g, b); malformed colours become mid grey."""
    c = color.lstrip("#")
    if len(c) != 6:
        return (128, 128, 128)
    try:
        return (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))
    except ValueError:
        return (128, 128, 128)
