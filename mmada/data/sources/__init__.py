"""Source readers, one per ``type`` of :mod:`mmada.data.specs` (see :mod:`.base` for the interface).

    from mmada.data.sources import READERS, get_reader
    sorted(READERS)  # ['alpaca', 'builtin', 'chat', 'gsm8k', 'idx', 'image_folder', …]
"""

from mmada.data.sources import builtin, text, vision  # noqa: F401  (register the readers)
from mmada.data.sources.base import (
    READERS,
    REASONS,
    Chunk,
    Normalized,
    RawRecord,
    RawReject,
    Reader,
    get_reader,
)

__all__ = ["READERS", "REASONS", "Chunk", "Normalized", "RawRecord", "RawReject", "Reader", "get_reader"]
