"""Layer 6 (beside cli): `diffperf explore`, a local web page over a JSON API.

`api` turns `GET /api/train?...` and `/api/infer?...` into the command line's own
parsing and run functions (same keys and values as `--json`), with input checks for a
server; `sweep` holds the small sweeps of the Pareto panel; `server` is the HTTP
server and the `explore` subcommand; `page.html`, `explore.js` and `explore.css` are
the page.
"""

from .api import ApiError, handle
from .server import add_explore, make_server, run_explore

__all__ = ["ApiError", "handle", "add_explore", "make_server", "run_explore"]
