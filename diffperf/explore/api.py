"""The explorer's JSON API: the command line's own parser and run functions over GET.

`GET /api/train?hardware=dgx_h100&model=llama3_8b&gpus=8&tp=8` answers with the
object `diffperf train --hardware dgx_h100 --model llama3_8b --gpus 8 --tp 8 --json`
prints: the query names are the CLI flags with `_` for `-`, each query is turned into
that argv and parsed by the same parser, and the same run function builds the answer.
`/api/infer` is `diffperf infer`, `/api/sensitivity?job=train|infer&...` is
`diffperf sensitivity JOB ... --json` (no tornado file, no Monte Carlo), and
`/api/sweep` evaluates the mappings of the same job (training: every tp, pp, micro-
batch on the same chips; serving: batch sizes) for the Pareto front.

Safe by default: only bundled hardware and model names (no paths, so no file of the
machine is read) unless the server was started with `--allow-paths`; every field is
checked like the CLI (and numbers must be finite and below `MAX_NUMBER`); bad input is
HTTP 400 with the CLI's one-line message; the number of fields, the length of values
and the size of a sweep are bounded.
"""

import math
import re
import threading
import urllib.parse

from .. import io
from ..cli import jobs, study
from . import sweep
from .sweep import MAX_SWEEP

__all__ = ["ApiError", "handle", "MAX_FIELDS", "MAX_VALUE", "MAX_NUMBER", "MAX_SWEEP"]

MAX_FIELDS = 64  # query fields per request
MAX_VALUE = 200  # characters per value
MAX_NUMBER = 1e30  # |number| in any field (SI leaves stay below 1e19)
MAX_INT = 10**7  # integer fields (chips, degrees, batch, lengths)
SLIDERS = (
    "chip.flops_bf16", "chip.flops_fp8", "chip.hbm_bandwidth", "chip.hbm_capacity",
    "chip.sram_capacity", "scale_up.bandwidth", "scale_out.bandwidth",
    "host.dispatch_overhead",
)  # fmt: skip
"""Hardware leaves the page shows as sliders (those > 0 on the chosen hardware)."""

_LOCK = threading.Lock()  # one evaluation at a time (JAX uses every core anyway)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}$")
_NUMBER = re.compile(
    r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf|infinity)$", re.IGNORECASE
)


class ApiError(ValueError):
    """Bad request: HTTP `status` with a one-line message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _parsers():
    """The CLI's subcommand parsers (train, infer, sensitivity train|infer)."""
    root = jobs.Parser(prog="diffperf")
    sub = root.add_subparsers(dest="command", required=True, parser_class=jobs.Parser)
    jobs.add_train(sub)
    jobs.add_infer(sub)
    study.add_sensitivity(sub)
    out = {}
    for name, p in sub.choices.items():
        if name == "sensitivity":  # its train / infer subparsers
            nested = next(a for a in p._actions if isinstance(a.choices, dict))
            for job, q in nested.choices.items():
                out[f"sensitivity {job}"] = q
        else:
            out[name] = p
    return root, out


_ROOT, _SUB = _parsers()
_HIDDEN = {"help", "json", "command", "job"}
_NO_API = {"tornado", "spread", "spread_leaf", "samples", "range"}  # files, slow MC


def _fields(parser) -> dict:
    """Dest → argparse action of a subcommand, minus what the API does not take."""
    return {
        a.dest: a
        for a in parser._actions
        if a.dest not in _HIDDEN | _NO_API and a.option_strings
    }


def _check_value(key: str, value: str, *, allow_paths: bool):
    if len(value) > MAX_VALUE:
        raise ApiError(f"{key}: value longer than {MAX_VALUE} characters")
    if any(ord(c) < 32 for c in value):
        raise ApiError(f"{key}: control characters are not allowed")
    for token in value.split("="):  # `set` values are PATH=VALUE
        if _NUMBER.match(token.strip()):
            number = float(token)
            if not math.isfinite(number):
                raise ApiError(f"{key}={value}: must be a finite number")
            if abs(number) > MAX_NUMBER:
                raise ApiError(f"{key}={value}: must be at most {MAX_NUMBER:g}")
            plain_int = "." not in token and "e" not in token.lower()
            if key != "set" and plain_int and number.is_integer():
                if abs(number) > MAX_INT:
                    raise ApiError(f"{key}={value}: must be at most {MAX_INT}")
    if key in ("hardware", "model", "draft_model") and not allow_paths:
        kind = "hardware" if key == "hardware" else "workloads"
        _bundled(key, kind, value)


def _bundled(key: str, kind: str, value: str):
    """Only names of bundled specs (or their aliases): never a path."""
    if not _NAME.match(value) or value.lower().endswith((".toml", ".json")):
        raise ApiError(
            f"{key}={value!r}: a bundled {kind} name is required (paths are refused; "
            "start the explorer with --allow-paths to allow them)"
        )
    try:
        path = io.resolve_path(kind, value)
    except ValueError as e:
        raise ApiError(str(e)) from None
    if path.resolve().parent != io.spec_dir(kind).resolve():
        raise ApiError(f"{key}={value!r}: a bundled {kind} name is required")


def _argv(command: str, pairs: list[tuple[str, str]], *, allow_paths: bool) -> list:
    parser = _SUB[command]
    fields = _fields(parser)
    argv = command.split() + ["--json"]
    seen = set()
    for key, value in pairs:
        action = fields.get(key)
        if action is None:
            raise ApiError(
                f"unknown query field {key!r}; allowed: {', '.join(sorted(fields))}"
            )
        if key in seen and not isinstance(action.default, list):  # append: repeat
            raise ApiError(f"{key}: given more than once")
        seen.add(key)
        _check_value(key, value, allow_paths=allow_paths)
        flag = max(action.option_strings, key=len)  # the long form
        if action.nargs == 0:  # store_true / BooleanOptionalAction
            on = _boolean(key, value)
            if on:
                argv.append(next(o for o in action.option_strings
                                 if not o.startswith("--no-")))  # fmt: skip
            elif any(o.startswith("--no-") for o in action.option_strings):
                argv.append(next(o for o in action.option_strings
                                 if o.startswith("--no-")))  # fmt: skip
        else:
            argv += [flag, value]
    return argv


def _boolean(key: str, value: str) -> bool:
    v = value.lower()
    if v in ("1", "true", "yes", "on", ""):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ApiError(f"{key}={value!r}: must be true or false")


def _parse(command: str, pairs, *, allow_paths: bool):
    argv = _argv(command, pairs, allow_paths=allow_paths)
    try:
        return _ROOT.parse_args(argv)
    except ValueError as e:  # jobs.UsageError: the CLI's one-line message
        raise ApiError(str(e).splitlines()[0]) from None


def query_pairs(query: str) -> list[tuple[str, str]]:
    """The (name, value) fields of a query string, bounded and strictly parsed."""
    if not query:
        return []
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=True,
            max_num_fields=MAX_FIELDS,
        )  # fmt: skip
    except ValueError as e:
        raise ApiError(f"malformed query: {str(e).splitlines()[0]}") from None
    return pairs


def handle(endpoint: str, query: str, *, allow_paths: bool = False) -> dict:
    """The JSON answer of one API endpoint (raises ApiError on bad input).

    Args:
        endpoint: train, infer, sensitivity, sweep, leaves or options.
        query: the URL's query string.
        allow_paths: accept TOML / config.json paths for hardware and model.
    """
    pairs = query_pairs(query)
    if endpoint == "options":
        return _options()
    if endpoint == "leaves":
        return _leaves(pairs, allow_paths=allow_paths)
    if endpoint in ("train", "infer"):
        args = _parse(endpoint, pairs, allow_paths=allow_paths)
        run = jobs.run_train if endpoint == "train" else jobs.run_infer
        return _run(run, args)
    if endpoint == "sensitivity":
        job = dict(pairs).get("job", "train")
        if job not in ("train", "infer"):
            raise ApiError(f"job={job!r}: must be train or infer")
        rest = [(k, v) for k, v in pairs if k != "job"]
        args = _parse(f"sensitivity {job}", rest, allow_paths=allow_paths)
        return _run(study.run_sensitivity, args)
    if endpoint == "sweep":
        job = dict(pairs).get("job", "train")
        if job not in ("train", "infer"):
            raise ApiError(f"job={job!r}: must be train or infer")
        rest = [(k, v) for k, v in pairs if k != "job"]
        args = _parse(job, rest, allow_paths=allow_paths)
        fn = sweep.train_front if job == "train" else sweep.infer_front
        return _run(fn, args)
    raise ApiError(f"unknown endpoint /api/{endpoint}", status=404)


def _run(fn, args) -> dict:
    with _LOCK:
        try:
            return jobs.json_safe(fn(args))
        except (ValueError, FileNotFoundError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ApiError(msg) from None


def _options() -> dict:
    from ..cli.emit import SERVE_FRAMEWORKS, TRAIN_FRAMEWORKS
    from ..core.units import DTYPES

    return {
        "hardware": {n: io.meta("hardware", n).get("name", n)
                     for n in io.hardware_names()},
        "models": {n: io.meta("workloads", n).get("name", n)
                   for n in io.workload_names()},
        "dtypes": list(DTYPES),
        "recompute": ["none", "selective", "full"],
        "emit": {"train": list(TRAIN_FRAMEWORKS), "infer": list(SERVE_FRAMEWORKS)},
        "limits": {"fields": MAX_FIELDS, "value_chars": MAX_VALUE,
                   "number": MAX_NUMBER, "integer": MAX_INT, "sweep": MAX_SWEEP},
    }  # fmt: skip


def _leaves(pairs, *, allow_paths: bool) -> dict:
    from ..core.paths import get_leaf

    fields = dict(pairs)
    unknown = set(fields) - {"hardware"}
    if unknown or "hardware" not in fields:
        raise ApiError("/api/leaves takes one field: hardware")
    _check_value("hardware", fields["hardware"], allow_paths=allow_paths)
    try:
        cluster = io.load_hardware(fields["hardware"])
    except ValueError as e:
        raise ApiError(str(e).splitlines()[0]) from None
    leaves = []
    for path in SLIDERS:
        value = float(get_leaf(cluster, path))
        if value > 0:
            leaves.append({"path": path, "value": value})
    return {"hardware": cluster.name, "leaves": leaves}
