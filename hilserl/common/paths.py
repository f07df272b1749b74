"""Files the package ships (urdf/, config/, launch/): the source tree, else share/hilserl."""
from __future__ import annotations

from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def share_path(*parts: str) -> Path:
    """Path of a shipped file; FileNotFoundError names where it was looked for."""
    local = SOURCE_ROOT.joinpath(*parts)
    if local.exists():
        return local
    try:
        from ament_index_python.packages import get_package_share_directory
        installed = Path(get_package_share_directory('hilserl')).joinpath(*parts)
    except Exception:  # noqa: BLE001 - no ament index: report the source path
        raise FileNotFoundError(f'{"/".join(parts)} not found at {local}') from None
    if not installed.exists():
        raise FileNotFoundError(f'{"/".join(parts)} not found at {local} or {installed}')
    return installed
