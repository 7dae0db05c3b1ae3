"""The files a paper command leaves: <name>.md (its table in markdown), <name>.json (the same rows) and
<name>.png (its figure), each through the one atomic writer."""

import json
from collections.abc import Callable
from pathlib import Path

from .. import files


def write(out: Path, name: str, text: str, rows: list[dict], plot: Callable[[Path], None]) -> None:
    """out/<name>.md (`text`), out/<name>.json (`rows`) and out/<name>.png (drawn by `plot(path)`)."""
    out = Path(out)
    files.write_text(out / f"{name}.md", text)
    files.write_text(out / f"{name}.json", json.dumps(rows, indent=1) + "\n")
    plot(out / f"{name}.png")
