"""The machine a benchmark ran on, recorded in every result JSON."""

import datetime
import os
import platform

import jax


def environment() -> dict:
    """Date, device, platform, CPU count, load average at start, JAX version, x64."""
    return dict(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        device=str(jax.devices()[0]),
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
        load_average_start=list(os.getloadavg()),
        jax=jax.__version__,
        x64=bool(jax.config.jax_enable_x64),
    )
