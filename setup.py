"""Package discovery, so that no subpackage or data folder can be left out of a wheel.

Everything else is in pyproject.toml. This file exists for one rename: the top-level ``adapters/`` folder
ships as ``clipag.adapters`` (a top-level ``adapters`` would collide with AdapterHub's package), and
``[tool.setuptools.packages.find]`` names packages after their folders, so it cannot express that.
Namespace discovery also lists data-only folders (``clipag/finetune/configs``), which setuptools wants listed.
"""

from setuptools import find_namespace_packages, setup

SKIP = ["*.__pycache__", "*.__pycache__.*"]
core = find_namespace_packages(include=["clipag", "clipag.*"], exclude=SKIP)
adapters = ["clipag." + name for name in find_namespace_packages(include=["adapters", "adapters.*"], exclude=SKIP)]

setup(packages=core + adapters, package_dir={"clipag.adapters": "adapters"})
