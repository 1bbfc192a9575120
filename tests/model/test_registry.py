"""Network registry: built-in names and aliases, helpful errors, and the ``extensions`` fallback
that imports nothing outside the ``extensions`` package and only accepts BaseNetwork subclasses.
"""

import sys
import textwrap

import pytest

from uhved_tf.errors import ConfigError
from uhved_tf.model import registry
from uhved_tf.model.base import BaseNetwork
from uhved_tf.model.registry import get_network_class, register_network, registered_names
from uhved_tf.model.uhved import UHVED

pytestmark = pytest.mark.filterwarnings("error")  # warnings as errors

EXTENSION_MODULE = "uhved_test_tmp_nets"


@pytest.mark.parametrize("name", ["u_hved", "U_HVED", "  u_hved ", "uhved",
                                  "u_hved.u_hved_net.U_HVED"])
def test_builtin_names_and_original_dotted_name_resolve_to_uhved(name):
    assert get_network_class(name) is UHVED


def test_registered_names_lists_uhved():
    assert "u_hved" in registered_names()


def test_unknown_name_suggests_the_closest_one():
    with pytest.raises(ConfigError) as info:
        get_network_class("u_hvde")
    message = str(info.value)
    assert 'Did you mean "u_hved"' in message
    assert "u_hvde" in message and "Registered: " in message and "extensions." in message


def test_unknown_name_without_a_close_match_still_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="Registered: .*u_hved"):
        get_network_class("zzzzzzzz")


@pytest.fixture
def no_imports(monkeypatch):
    """Fail the test if the registry tries to import anything."""
    def forbidden(name, *args, **kwargs):
        raise AssertionError(f"registry imported {name!r}")
    monkeypatch.setattr(registry.importlib, "import_module", forbidden)


@pytest.mark.parametrize("path", ["os.system", "subprocess.run", "uhved_tf.model.uhved.UHVED",
                                  "builtins.eval", "uhved_test_never_imported_pkg.Net"])
def test_dotted_path_outside_extensions_is_rejected_without_importing(path, no_imports):
    before = set(sys.modules)
    with pytest.raises(ConfigError, match="unknown network"):
        get_network_class(path)
    assert set(sys.modules) == before


@pytest.fixture
def extensions_pkg(tmp_path, monkeypatch):
    """A throw-away ``extensions`` package in ``tmp_path`` (first on sys.path), with a module holding
    a valid network, a plain class and a non-class attribute. The real ``extensions`` package, if
    imported, is restored afterwards; nothing is written in the repository."""
    pkg = tmp_path / "extensions"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / f"{EXTENSION_MODULE}.py").write_text(textwrap.dedent("""
        from uhved_tf.model.base import BaseNetwork

        class GoodNet(BaseNetwork):
            pass

        class NotANetwork:
            pass

        not_a_class = 42
    """))
    saved = {k: v for k, v in sys.modules.items() if k == "extensions" or k.startswith("extensions.")}
    for key in saved:
        monkeypatch.delitem(sys.modules, key)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for key in [k for k in sys.modules if k == "extensions" or k.startswith("extensions.")]:
        del sys.modules[key]
    sys.modules.update(saved)


def test_extension_class_is_loaded(extensions_pkg):
    cls = get_network_class(f"extensions.{EXTENSION_MODULE}.GoodNet")
    assert cls.__name__ == "GoodNet" and issubclass(cls, BaseNetwork)


@pytest.mark.parametrize("attr,match", [("NotANetwork", "not a subclass"),
                                        ("not_a_class", "not a subclass"),
                                        ("Missing", "has no attribute")])
def test_extension_attribute_that_is_not_a_network_is_rejected(extensions_pkg, attr, match):
    with pytest.raises(ConfigError, match=match):
        get_network_class(f"extensions.{EXTENSION_MODULE}.{attr}")


def test_missing_extension_module_is_a_config_error(extensions_pkg):
    with pytest.raises(ConfigError, match="cannot import module"):
        get_network_class("extensions.uhved_test_no_such_module.Net")


def test_register_network_type_checks_against_base_class():
    with pytest.raises(TypeError, match="BaseNetwork"):
        register_network("uhved_test_not_a_network", dict)
    assert "uhved_test_not_a_network" not in registered_names()
