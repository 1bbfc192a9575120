"""Config and plug-in safety (issue #8, item 4): ``[NETWORK] name`` reaches only the registry or a
class defined in the ``extensions`` package that subclasses BaseNetwork; nothing from the config
is ``eval``-ed or ``exec``-ed, and nothing is pickled."""

from __future__ import annotations

import re

import pytest

from tests.reliability.helpers import REPO, assert_one_line, tiny_config
from uhved_tf.errors import ConfigError


@pytest.mark.parametrize("name, expected", [
    ("os.system", "unknown network"),
    ("builtins.eval", "unknown network"),
    ("__import__('os').system('touch /tmp/pwned')", "unknown network"),
    ("subprocess.Popen", "unknown network"),
    ("uhved_tf.model.uhved.UHVED", "unknown network"),               # built-ins only by registered name
    ("extensions.../../x", "cannot import module"),
    ("extensions/../uhved_tf/model/uhved", "unknown network"),
    ("extensions.os.system", "cannot import module"),
    ("extensions.zero_fill_unet.tf", "not a subclass"),               # a module attribute
    ("extensions.zero_fill_unet.BaseNetwork", "not a subclass"),      # the abstract base itself
    ("extensions.mean_fusion.UHVED", "outside the extensions package"),  # imported, not defined there
    ("extensions.__init__.x", "has no attribute"),
    ("extensions.zero_fill_unet.ZeroFillUNet.mro", "cannot import module"),
])
def test_hostile_network_names_are_config_errors(name, expected, tmp_path):
    from uhved_tf.model.registry import get_network_class

    with pytest.raises(ConfigError) as info:
        get_network_class(name)
    assert_one_line(str(info.value), "[NETWORK] name", expected)
    assert not (tmp_path / "pwned").exists()


def test_the_application_refuses_a_hostile_network_before_building_anything(tmp_path):
    from uhved_tf.application import Application

    cfg = tiny_config(tmp_path / "data", tmp_path / "model", "--name", "os.system")
    with pytest.raises(ConfigError, match='name = "os.system"'):
        Application(cfg).build_model()
    assert not (tmp_path / "model").exists()


def test_extension_networks_still_load():
    from uhved_tf.model.base import BaseNetwork
    from uhved_tf.model.registry import get_network_class

    for name in ("extensions.zero_fill_unet.ZeroFillUNet", "extensions.mean_fusion.MeanFusionUHVED"):
        cls = get_network_class(name)
        assert issubclass(cls, BaseNetwork) and cls.__module__.startswith("extensions.")


_FORBIDDEN = [
    (re.compile(r"\bimport\s+(c?pickle|dill|shelve|marshal)\b|\bfrom\s+(c?pickle|dill|shelve|marshal)\b"), "pickle"),
    (re.compile(r"(?<![\w.])(eval|exec)\s*\("), "eval/exec"),
    (re.compile(r"\ballow_pickle\s*=\s*True"), "allow_pickle"),
    (re.compile(r"\byaml\.(unsafe_)?load\s*\((?![^)]*SafeLoader)"), "yaml.load"),
    (re.compile(r"\b(np|numpy)\.load\s*\("), "np.load (pickles by default in old NumPy)"),
    (re.compile(r"\bpickle\b"), "pickle"),
]


@pytest.mark.parametrize("package", ["uhved_tf", "extensions"])
def test_no_eval_exec_or_pickle_in_the_package_source(package):
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            for pattern, what in _FORBIDDEN:
                if pattern.search(code):
                    offenders.append(f"{path.relative_to(REPO)}:{line_no}: {what}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
