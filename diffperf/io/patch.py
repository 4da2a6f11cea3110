"""Rewrite fitted values into a hardware TOML in place (calibration `--write`).

Only the `key = value` lines of the named `[table].key` paths change (their comment
becomes `# calibrated: <note>`); every other line, comment and provenance note stays.
A key the file inherits through `extends` is added under its table (created if absent).
"""

import re
from pathlib import Path

__all__ = ["patch_toml"]

_TABLE = re.compile(r"^\s*\[(\w+)\]\s*$")


def patch_toml(path: str | Path, values: dict[str, float], note: str) -> None:
    """Rewrite the `key = value` lines of the given "table.key" paths of a TOML file.

    Args:
        path: the hardware TOML to rewrite.
        values: "table.key" → the new value (written with 4 significant digits).
        note: the provenance written after `# calibrated:`.

    Raises:
        ValueError: a path that is not "table.key".
    """
    path = Path(path)
    for full in values:
        if full.count(".") != 1:
            raise ValueError(f"patch_toml: {full!r} must be 'table.key'")
    lines = path.read_text().splitlines()
    table, done = None, set()
    for i, line in enumerate(lines):
        m = _TABLE.match(line)
        if m:
            table = m.group(1)
            continue
        for full, v in values.items():
            t, key = full.split(".")
            if t == table and re.match(rf"^\s*{key}\s*=", line):
                lines[i] = f"{key} = {v:.4g}  # calibrated: {note}"
                done.add(full)
    for full in [f for f in values if f not in done]:  # inherited: add to the table
        t, key = full.split(".")
        header = next((i for i, ln in enumerate(lines) if ln.strip() == f"[{t}]"), None)
        if header is None:
            lines += ["", f"[{t}]"]
            header = len(lines) - 1
        lines.insert(header + 1, f"{key} = {values[full]:.4g}  # calibrated: {note}")
    path.write_text("\n".join(lines) + "\n")
