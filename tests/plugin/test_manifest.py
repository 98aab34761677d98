"""Every command in napari.yaml points at something importable, without starting Qt."""

from __future__ import annotations

import importlib
from importlib import resources

import yaml


def test_every_python_name_in_the_manifest_imports() -> None:
    manifest = yaml.safe_load((resources.files("napari_medgen3d") / "napari.yaml").read_text())
    commands = manifest["contributions"]["commands"]
    assert commands
    for command in commands:
        module_name, _, attribute = command["python_name"].partition(":")
        assert callable(getattr(importlib.import_module(module_name), attribute)), command


def test_manifest_is_valid_for_npe2() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-medgen3d")
    assert manifest.name == "napari-medgen3d"
    assert {r.command for r in manifest.contributions.readers} == {"napari-medgen3d.get_reader"}
