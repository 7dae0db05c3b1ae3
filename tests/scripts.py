"""Import a script of benchmarks/ (the instruments) or studies/ (one-off studies) as a module, as `python
<folder>/<name>.py` sees its neighbours."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    return _load(ROOT / "benchmarks", name)


def load_study(name: str):
    return _load(ROOT / "studies", name)


def _load(folder: Path, name: str):
    sys.path.insert(0, str(folder))  # scripts import their neighbours (first_steps, reencode_jpeg) by name
    try:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))
