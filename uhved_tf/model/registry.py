"""Network registry: config names -> network classes.

``[NETWORK] name`` is looked up here by name (case-insensitive, with the original U-HVED dotted
names as aliases). Anything else must be a dotted path to a class inside the ``extensions``
package (``extensions.my_net.MyNet``); the class must subclass :class:`BaseNetwork`. Nothing is
``eval``-ed and no other module can be imported through the config.
"""

from __future__ import annotations

import importlib

from uhved_tf.errors import ConfigError, close_matches
from uhved_tf.model.base import BaseNetwork

_REGISTRY: dict[str, type] = {}
_ALIASES: dict[str, str] = {}
EXTENSION_PACKAGES = ("extensions",)


def register_network(name: str, cls: type, aliases=()) -> None:
    if not (isinstance(cls, type) and issubclass(cls, BaseNetwork)):
        raise TypeError(f"{cls!r} must subclass uhved_tf.model.base.BaseNetwork")
    _REGISTRY[name.lower()] = cls
    for alias in aliases:
        _ALIASES[alias.lower()] = name.lower()


def registered_names() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_network_class(name: str) -> type:
    _ensure_builtin()
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _REGISTRY:
        return _REGISTRY[key]
    if "." in name and name.split(".")[0] in EXTENSION_PACKAGES:
        return _load_extension(name.strip())
    close = close_matches(key, list(_REGISTRY) + list(_ALIASES), n=1)
    hint = f' Did you mean "{close[0]}"?' if close else ""
    raise ConfigError(
        f'[NETWORK] name = "{name}": unknown network.{hint} Registered: {", ".join(sorted(_REGISTRY))}; '
        f"or a class in the extensions package, e.g. extensions.my_net.MyNet")


def _load_extension(path: str) -> type:
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f'[NETWORK] name = "{path}": cannot import module {module_name} ({exc})') from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f'[NETWORK] name = "{path}": module {module_name} has no attribute {attr}')
    if not (isinstance(cls, type) and issubclass(cls, BaseNetwork)) or cls is BaseNetwork:
        raise ConfigError(f'[NETWORK] name = "{path}": {attr} is not a subclass of '
                          "uhved_tf.model.base.BaseNetwork")
    if str(getattr(cls, "__module__", "")).split(".")[0] not in EXTENSION_PACKAGES:
        # e.g. a built-in network imported into an extension module: only classes defined in the
        # extensions package are reachable by dotted path (built-ins by their registered names).
        raise ConfigError(f'[NETWORK] name = "{path}": {attr} is defined in {cls.__module__}, outside the '
                          f"extensions package; use a registered name ({', '.join(sorted(_REGISTRY))}) "
                          "or a class defined in extensions/")
    return cls


def _ensure_builtin() -> None:
    if _REGISTRY:
        return
    from uhved_tf.model.hemis import HeMIS
    from uhved_tf.model.single import Single
    from uhved_tf.model.u_hemis import UHeMIS, UHeMISWide
    from uhved_tf.model.uhved import UHVED

    register_network("u_hved", UHVED, aliases=("u_hved.u_hved_net.U_HVED", "uhved", "U_HVED"))
    register_network("u_hemis", UHeMIS, aliases=("u_hemis.u_hemis_net.U_HeMIS", "uhemis", "U_HeMIS"))
    register_network("u_hemis_wide", UHeMISWide)
    register_network("hemis", HeMIS)
    register_network("single", Single)
