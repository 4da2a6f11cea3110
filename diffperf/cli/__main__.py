"""`python -m diffperf.cli`: the same as the `diffperf` console script."""

from .main import main

raise SystemExit(main())
