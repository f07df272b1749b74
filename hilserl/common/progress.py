"""Progress bars for long steps run at a terminal (reading episode bags for demos, classifier data
or an export): tqdm when the stream is a terminal and tqdm is installed, otherwise the iterable
as it is (logs and pipes get no bar characters)."""
from __future__ import annotations

import sys
from typing import Iterable, Optional, TextIO, TypeVar

T = TypeVar('T')


def progress_bar(iterable: Iterable[T], total: Optional[int] = None, desc: str = '',
                 unit: str = 'it', stream: Optional[TextIO] = None) -> Iterable[T]:
    stream = sys.stderr if stream is None else stream
    if not getattr(stream, 'isatty', lambda: False)():
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, leave=False,
                dynamic_ncols=True)
