"""Where bundled data lives: in a checkout the top-level folders, in an installed wheel ``simserve/_data``."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """Folder of bundled ``hardware_profiles``, ``workloads`` or ``scenarios``."""
    installed = _PACKAGE / "_data" / kind
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / kind


def catalog_dir() -> Path:
    """Folder of the bundled model catalog (always inside the package)."""
    return _PACKAGE / "catalog" / "models"


def bundled_names(kind: str, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> list[str]:
    folder = data_dir(kind) if kind != "models" else catalog_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.iterdir() if p.suffix in suffixes)


def resolve(kind: str, ref: str, suffixes: tuple[str, ...] = (".yaml", ".yml"), base: Path | None = None) -> Path | None:
    """A bundled name (``h100-sxm-80gb``) or a file path (relative to ``base`` first) -> a file, or None."""
    folder = data_dir(kind) if kind != "models" else catalog_dir()
    for suffix in ("",) + suffixes:
        candidate = folder / f"{ref}{suffix}"
        if candidate.is_file() and "/" not in ref and "\\" not in ref:
            return candidate
    path = Path(ref).expanduser()
    for candidate in ([base / path] if base is not None and not path.is_absolute() else []) + [path]:
        if candidate.is_file():
            return candidate
    return None
