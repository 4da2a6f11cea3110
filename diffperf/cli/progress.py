"""Progress bars for commands that take more than a second.

A rich progress bar on stderr when stderr is a terminal and `--json` is off; nothing
otherwise (pipes, CI logs and `--json` stay clean). Used by sweep, optimize,
calibrate and validate.
"""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress", "wanted"]


def wanted(args) -> bool:
    """Show progress: stderr is a terminal and the command is not printing JSON."""
    return not getattr(args, "json", False) and sys.stderr.isatty()


@contextmanager
def progress(
    args, label: str, total: float | None = None
) -> Iterator[Callable[..., None]]:
    """Yields `update(advance=0, total=None, label=None, completed=None)`.

    A no-op when not wanted; `completed` sets the count, `advance` adds to it.

    Example:
        with progress(args, "evaluating", total=n) as update:
            for chunk in chunks:
                ...
                update(len(chunk))
    """
    if not wanted(args):
        yield lambda *a, **k: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(label, total=total)

    def update(advance: float = 0, total=None, label=None, completed=None):
        fields = {} if label is None else {"description": label}
        if completed is not None:
            fields["completed"] = completed
        if total is not None:
            fields["total"] = total
        bar.update(task, advance=advance, **fields)

    bar.start()
    try:
        yield update
    finally:
        bar.stop()
