"""The package list, which pyproject.toml cannot compute: trainkit and its subpackages, Hydra's
plugin package, and configs/ and recipes/ renamed into trainkit's namespace (the folders are
mapped by `[tool.setuptools.package-dir]` in pyproject.toml; everything else is declared there)."""
from setuptools import find_namespace_packages, find_packages, setup

setup(packages=[
    *find_packages(include=["trainkit", "trainkit.*"]),
    *find_namespace_packages(include=["hydra_plugins.*"]),  # hydra_plugins/ itself is a namespace
    "trainkit.configs",
    *(f"trainkit.{name}" for name in find_packages(include=["recipes", "recipes.*"])),
])
