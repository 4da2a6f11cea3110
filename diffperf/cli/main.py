"""The `diffperf` command line and its dispatch to one module per command.

Commands: train, infer, validate, sensitivity, sweep, optimize, trace, roofline,
calibrate, list, explore.

Every command accepts `--json` (exactly one JSON object on stdout, SI units); exit 0 on
success and 2 on bad input, with a one-line message on stderr naming the field.
"""

import json
import os
import sys

from ..explore.server import add_explore, run_explore
from ..validation.run import print_report, validate_file
from .calibrate import add_calibrate, print_calibrate, run_calibrate
from .jobs import (
    Interrupted,
    Parser,
    add_infer,
    add_list,
    add_train,
    add_validate,
    json_safe,
    list_specs,
    print_infer,
    print_train,
    run_infer,
    run_train,
)
from .optimize import add_optimize, print_optimize, run_optimize
from .progress import progress
from .study import (
    add_sensitivity,
    add_sweep,
    print_sensitivity,
    print_sweep,
    run_sensitivity,
    run_sweep,
)
from .trace import (
    add_roofline,
    add_trace,
    print_roofline,
    print_trace,
    run_roofline,
    run_trace,
)

__all__ = ["main"]


def main(argv=None) -> int:
    """Entry point of the `diffperf` console script."""
    try:
        return _main(argv)
    except BrokenPipeError:  # `diffperf ... | head` closed the pipe: not our error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _commands() -> dict:
    """Command → (run(args) -> dict, print(dict) or None)."""
    return {
        "train": (run_train, print_train),
        "infer": (run_infer, print_infer),
        "sensitivity": (run_sensitivity, print_sensitivity),
        "sweep": (run_sweep, print_sweep),
        "optimize": (run_optimize, print_optimize),
        "trace": (run_trace, print_trace),
        "roofline": (run_roofline, print_roofline),
        "validate": (
            _validate,
            print_report,
        ),
        "calibrate": (run_calibrate, print_calibrate),
        "list": (list_specs, None),
        "explore": (run_explore, None),
    }


def _validate(args) -> dict:
    """`validate`, with a progress bar over the rows on a terminal."""
    with progress(args, "predicting rows") as update:
        return validate_file(
            args.data, fidelity=args.fidelity,
            progress=lambda done, total: update(completed=done, total=total),
        )  # fmt: skip


def _main(argv) -> int:
    parser = Parser(prog="diffperf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train(sub)
    add_infer(sub)
    add_validate(sub)
    add_list(sub)

    add_sensitivity(sub)
    add_sweep(sub)

    add_optimize(sub)

    add_trace(sub)
    add_roofline(sub)

    add_calibrate(sub)

    add_explore(sub)
    try:
        args = parser.parse_args(argv)
        run, show = _commands()[args.command]
        out = run(args)
        if not args.json and show is not None:
            show(out)
    except (ValueError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(json_safe(out)))
    return 0
