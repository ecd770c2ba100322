"""The one registry type every extension point uses."""
import pytest

from edistill.models import arch
from edistill.registry import Registry


def test_a_registry_keeps_order_refuses_a_name_twice_and_names_the_known_ones():
  assert list(arch.ARCHS) == ["bert", "mpnet"]
  reg = Registry("thing")
  reg.register(arch.ARCHS["bert"])
  with pytest.raises(ValueError, match="thing 'bert' is registered twice"):
    reg.register(arch.ARCHS["bert"])
  with pytest.raises(ValueError, match=r"unknown thing 'gpt2'; expected one of \('bert',\)"):
    reg.lookup("gpt2")
  assert reg.lookup("bert") is arch.ARCHS["bert"]
