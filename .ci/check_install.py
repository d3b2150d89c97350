"""CI: the installed clipag holds every file of the source tree, and every module of it imports.

    python .ci/check_install.py SOURCE_ROOT WHEEL

Run it with the wheel's venv, from outside the source tree (so ``import clipag`` cannot find the sources). A
subpackage or data file that packaging leaves out fails here with its name, not later at a user's import.
"""

from __future__ import annotations

import importlib
import sys
import zipfile
from pathlib import Path

TREES = {"clipag": "clipag", "adapters": "clipag/adapters"}  # source folder → where the wheel installs it


def expected_files(root: Path) -> dict[str, Path]:
    """Installed path → source file, for every file under the package folders."""
    files = {}
    for folder, installed in TREES.items():
        for path in sorted((root / folder).rglob("*")):
            relative = path.relative_to(root / folder)
            if path.is_file() and "__pycache__" not in relative.parts and path.suffix not in (".pyc", ".pyo"):
                files[f"{installed}/{relative.as_posix()}"] = path
    return files


def module_name(installed: str) -> str:
    """``clipag/finetune/data.py`` → ``clipag.finetune.data``; ``clipag/demo/__init__.py`` → ``clipag.demo``."""
    parts = installed.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def main(root: Path, wheel: Path) -> int:
    problems = []
    expected = expected_files(root)
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    top_level = {name.split("/")[0] for name in in_wheel if ".dist-info/" not in name}
    if top_level != {"clipag"}:
        problems.append(f"the wheel's top-level names are {sorted(top_level)}; only clipag belongs there "
                        "(adapters/ installs as clipag.adapters)")
    problems += [f"missing from the wheel: {name} (from {source})" for name, source in expected.items()
                 if name not in in_wheel]

    import clipag

    site = Path(clipag.__file__).resolve().parent.parent
    if site == root.resolve():
        problems.append(f"clipag was imported from the source tree {site}, not from the installed wheel")
    problems += [f"not installed: {site / name}" for name in expected if not (site / name).is_file()]

    modules = sorted({module_name(name) for name in expected if name.endswith(".py")
                      and not name.endswith("/__main__.py")})  # __main__ runs the command: smoke-tested instead
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # any failure, with its cause, is the report
            problems.append(f"import {name} failed: {type(e).__name__}: {e}")

    for problem in problems:
        print(f"check_install: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_install: {len(expected)} files of clipag/ and adapters/ are in {wheel.name} and installed "
              f"in {site}; {len(modules)} modules import")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
