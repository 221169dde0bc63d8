"""Every module in this package registers one policy; importing the package registers them all."""
import importlib
import pkgutil

from .registry import ALL, COST_MODELS, ROUTERS, SCHEDULERS

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "registry" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["ALL", "COST_MODELS", "ROUTERS", "SCHEDULERS"]
