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
    """A bundled name (``h100-sxm-80gb``) or a file path (relative to ``base`` first) -> a file, or None.

    A reference that looks like a path (it has a folder separator or a file suffix) is looked up as a
    file first, so ``./quickstart.yaml`` in the working folder wins over the bundled ``quickstart``."""
    folder = data_dir(kind) if kind != "models" else catalog_dir()
    path = Path(ref).expanduser()
    files = [base / path] if base is not None and not path.is_absolute() else []
    files.append(path)
    bundled = [] if "/" in ref or "\\" in ref else [folder / f"{ref}{suffix}" for suffix in ("",) + suffixes]
    looks_like_path = bool(path.suffix) or len(bundled) == 0
    for candidate in (files + bundled) if looks_like_path else (bundled + files):
        try:
            if candidate.is_file():
                return candidate
        except OSError:          # e.g. a name longer than the file system allows: not a file we have
            continue
    return None
