"""Files written whole or not at all: a reader (or the next start after a crash) sees the old
content or the new, never half of either."""
from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, flush it to disk, rename it over `path`
    (creating the parent directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
