"""DeepSeek-V3 training and serving vs scale-up domain, NICs per GPU and host link.

For every (domain size, NICs per GPU, host link) of config.toml, on B200 GPUs:
  - training (256 GPUs, PP·DP·EP; optimizer state in HBM or offloaded to host memory):
    step time, tokens/s per GPU, NIC demand per GPU and per node, $ per million tokens;
  - serving (one continuous-batching replica, TP = EP = 32): TPOT, output tokens/s per
    GPU, NIC demand per GPU, $ per million output tokens.
$ is `dp.hourly_cost` (the project's cost model: chip, host share, NICs and their
switch ports, scale-up links, amortized over `cluster.cost.lifetime`, plus power); it
prices the NICs per GPU but not the size of the NVLink domain.

The varied quantities are float leaves, so each mapping is compiled once (`jax.jit`)
and evaluated for all hardware points.

Run: `python experiments/moe_system_study/run.py` (from the repository root).
Writes results.json, step_time.png, nic_demand.png and cost.png next to this file.
"""

import itertools
import json
import time
import tomllib
from pathlib import Path

import equinox as eqx
import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import diffperf as dp  # noqa: E402

HERE = Path(__file__).resolve().parent
LINK_STYLE = {"pcie": "--", "c2c": "-"}
NIC_COLOR = {0.5: "tab:red", 1.0: "tab:blue", 2.0: "tab:green"}


def base_cluster(cfg) -> dp.Cluster:
    """The chip and tray of `hardware`, with the study's NIC and PCIe figures."""
    c = dp.load_hardware(cfg["hardware"])  # with its anchored cost leaves
    up = c.scale_up
    up = dp.NetworkTier(
        bandwidth=up.bandwidth, latency=up.latency, efficiency=up.efficiency,
        size=up.size, topology=up.topology,
        in_network_reduction=cfg["in_network_reduction"],
    )  # fmt: skip
    c = eqx.tree_at(lambda c: c.scale_up, c, up)
    return eqx.tree_at(
        lambda c: (c.host.pcie_bandwidth, c.scale_out.bandwidth, c.memory_tier),
        c,
        (
            cfg["gpu_pcie_bandwidth"],
            cfg["nic_bandwidth"],
            dp.MemoryTier(**cfg["host_links"]["pcie"]),
        ),
        is_leaf=lambda x: x is None,
    )


def variant(base: dp.Cluster, size, nics_per_gpu, link: dict) -> dp.Cluster:
    """`base` with a domain of `size` GPUs, its NICs and its host memory link."""
    per_node = base.host.chips_per_node
    return eqx.tree_at(
        lambda c: (
            c.scale_up.size,
            c.host.nics_per_node,
            c.memory_tier.bandwidth,
            c.memory_tier.capacity,
        ),
        base,
        (
            size,
            nics_per_gpu * per_node,
            link["bandwidth"],
            link["capacity"],
        ),
    )


def main():
    cfg = tomllib.loads((HERE / "config.toml").read_text())
    model = dp.load_workload(cfg["model"])
    base = base_cluster(cfg)
    tr = cfg["train"]
    fixed = {k: tr[k] for k in ("pp", "dp", "ep", "microbatch", "global_batch")}
    mappings = {
        f: dp.Parallelism(
            **fixed,
            seq_len=tr["seq_len"],
            recompute=tr["recompute"],
            offload_optimizer=f,
        )  # fmt: skip
        for f in tr["offload_optimizer"]
    }
    sv = {k: v for k, v in cfg["serve"].items() if k != "offload_kv"}
    servings = {f: dp.Serving(**sv, offload_kv=f) for f in cfg["serve"]["offload_kv"]}
    for serving in servings.values():
        dp.check_serving(model, serving)

    def train_metrics(cluster, mapping):
        b = dp.train_step(cluster, model, mapping)
        usd_h = dp.hourly_cost(cluster, b.chips)
        tok_s = b.tokens / b.total
        return dict(
            step_time_s=b.total,
            tokens_per_s_per_gpu=b.tokens_per_s_per_gpu,
            nic_demand_bytes_per_s_per_gpu=b.nic_demand,
            nic_demand_bytes_per_s_per_node=b.nic_demand * cluster.host.chips_per_node,
            nic_bandwidth_bytes_per_s_per_gpu=cluster.scale_out_bandwidth(),
            memory_per_gpu_bytes=b.memory_per_gpu,
            feasible=b.feasible,
            ep_comm_s=b.ep_comm,
            offload_s=b.offload,
            usd_per_million_tokens=usd_h / (3600.0 * tok_s) * 1e6,
        )

    def serve_metrics(cluster, serving):
        cb = dp.continuous_batching(cluster, model, serving)
        per_gpu = cb["output_tokens_per_s"] / serving.chips
        usd_h = dp.hourly_cost(cluster, serving.chips)
        return dict(
            tpot_s=cb["tpot"],
            output_tokens_per_s_per_gpu=per_gpu,
            nic_demand_bytes_per_s_per_gpu=cb["nic_demand"],
            usd_per_million_output_tokens=usd_h
            / (3600.0 * cb["output_tokens_per_s"])
            * 1e6,
            kv_offload_s=cb["step"].kv_offload,
        )

    train_fn = {
        f: jax.jit(lambda c, m=m: train_metrics(c, m)) for f, m in mappings.items()
    }
    serve_fn = {
        f: jax.jit(lambda c, s=s: serve_metrics(c, s)) for f, s in servings.items()
    }
    start = time.time()
    rows = []
    for size, nics, link in itertools.product(
        cfg["domain_sizes"], cfg["nics_per_gpu"], cfg["host_links"]
    ):
        c = variant(base, size, nics, cfg["host_links"][link])
        row = dict(domain_size=size, nics_per_gpu=nics, host_link=link)
        for f, fn in train_fn.items():
            key = "train" if f == 0 else f"train_offload_{f:g}"
            row[key] = {k: _py(v) for k, v in fn(c).items()}
        for f, fn in serve_fn.items():
            key = "serve" if f == 0 else f"serve_offload_kv_{f:g}"
            row[key] = {k: _py(v) for k, v in fn(c).items()}
        rows.append(row)
    elapsed = time.time() - start
    out = dict(
        config=cfg,
        note="SI units; $ from dp.hourly_cost (the project's cost model)",
        seconds=elapsed,
        rows=rows,
    )
    (HERE / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(cfg, rows)
    jobs = len(train_fn) + len(serve_fn)
    print(f"{len(rows)} hardware points x {jobs} jobs in {elapsed:.1f} s")
    for r in rows:
        if r["host_link"] == "c2c":
            t, s = r["train"], r["serve"]
            print(
                f"domain {r['domain_size']:>3} nics/gpu {r['nics_per_gpu']:.1f}: "
                f"train {t['step_time_s']:.2f} s, NIC "
                f"{t['nic_demand_bytes_per_s_per_gpu'] / 1e9:.1f} GB/s/GPU, "
                f"${t['usd_per_million_tokens']:.3f}/Mtok | serve TPOT "
                f"{s['tpot_s'] * 1e3:.1f} ms, NIC "
                f"{s['nic_demand_bytes_per_s_per_gpu'] / 1e9:.2f} GB/s/GPU, "
                f"${s['usd_per_million_output_tokens']:.3f}/Mtok"
            )


def _py(v):
    x = v.item()
    return bool(x) if isinstance(x, bool) else float(x)


def _lines(ax, cfg, rows, job, metric, scale=1.0, links=("pcie", "c2c")):
    for nics, link in itertools.product(cfg["nics_per_gpu"], links):
        pts = [r for r in rows if r["nics_per_gpu"] == nics and r["host_link"] == link]
        ax.plot(
            [r["domain_size"] for r in pts],
            [r[job][metric] * scale for r in pts],
            LINK_STYLE[link],
            color=NIC_COLOR[nics],
            marker="o",
            label=f"{nics:g} NIC/GPU, {link}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(cfg["domain_sizes"], [str(s) for s in cfg["domain_sizes"]])
    ax.set_xlabel("scale-up domain [GPUs]")
    ax.grid(alpha=0.3)


def plot(cfg, rows):
    """step_time.png, nic_demand.png and cost.png."""
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for ax, (job, metric, label) in zip(
        axes,
        [
            ("train", "step_time_s", "training step [s] (optimizer in HBM)"),
            (
                "train_offload_1",
                "step_time_s",
                "training step [s] (optimizer offloaded)",
            ),
            ("serve", "tpot_s", "serving TPOT [ms] (KV in HBM)"),
            (
                "serve_offload_kv_0.5",
                "tpot_s",
                "serving TPOT [ms] (half the KV offloaded)",
            ),
        ],
        strict=True,
    ):
        _lines(ax, cfg, rows, job, metric, 1e3 if job.startswith("serve") else 1.0)
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("DeepSeek-V3 on B200: step time vs NVLink domain, NICs and host link")
    fig.tight_layout()
    fig.savefig(HERE / "step_time.png", dpi=120)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, job, label in zip(
        axes, ("train", "serve"), ("training", "serving (decode replica)"), strict=True
    ):
        _lines(ax, cfg, rows, job, "nic_demand_bytes_per_s_per_gpu", 1e-9, ("c2c",))
        for nics in cfg["nics_per_gpu"]:
            cap = min(nics * cfg["nic_bandwidth"], cfg["gpu_pcie_bandwidth"]) / 1e9
            ax.axhline(cap, color=NIC_COLOR[nics], lw=0.8, ls=":")
        ax.set_ylabel("NIC demand [GB/s per GPU] (dotted: NIC capacity)")
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "nic_demand.png", dpi=120)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _lines(axes[0], cfg, rows, "train", "usd_per_million_tokens")
    axes[0].set_ylabel("$ per million training tokens")
    _lines(axes[1], cfg, rows, "serve", "usd_per_million_output_tokens", 1.0, ("c2c",))
    axes[1].set_ylabel("$ per million output tokens")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "cost.png", dpi=120)


if __name__ == "__main__":
    main()
