"""Every module imports (catches undefined names and broken imports early)."""

import importlib
import pkgutil

import pytest

import lightalign

MODULES = sorted(m.name for m in pkgutil.walk_packages(lightalign.__path__, "lightalign."))


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_recipes_are_not_importable():
    with pytest.raises(ImportError, match="never import from recipes"):
        importlib.import_module("recipes")
