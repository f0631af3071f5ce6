"""Where the ffmpeg binary is: the configured one, the system's, or the ``imageio-ffmpeg`` wheel's.

Services that decode or render media (the orchestrator's upload check, the stage workers) declare
``imageio-ffmpeg`` themselves; the import is lazy so services without media never need it.
"""

from __future__ import annotations

import shutil
from functools import lru_cache


@lru_cache(maxsize=4)
def ffmpeg_exe(configured: str = "") -> str:
    """The configured binary, else the system ffmpeg, else the imageio-ffmpeg one."""
    if configured:
        return configured
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())
