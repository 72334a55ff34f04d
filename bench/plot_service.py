"""Plots of the service benchmark: throughput vs boto3, and the server's RSS over time.

    .venv/bin/python -m bench.plot_service [--json bench/results/service.json]
                                           [--out docs/img/bench-service.png]

Left: MB/s per contender for the upload and the download (medians, with the min..max of
the runs as error bars). Right: the server's RSS, sampled every 50 ms through the whole
run, with each transfer's window shaded by who was transferring, the RSS before the first
transfer and the 256 MiB target.

Needs matplotlib, which is not a project dependency: ``.venv/bin/pip install matplotlib``.
"""

from __future__ import annotations

import sys

from bench._plot import finish, label_bar, start

CONTENDERS = ("reelvault", "boto3", "boto3-parts", "relay")
COLORS = {
    "reelvault": "#2b6cb0",
    "boto3": "#8c8c8c",
    "boto3-parts": "#c0c0c0",
    "relay": "#d69e2e",
}
OPERATIONS = ("upload", "download")
WINDOW_COLORS = {
    ("upload", "reelvault"): "#2b6cb0",
    ("download", "reelvault"): "#38a169",
}


def main(argv: list[str] | None = None) -> int:
    started = start(argv, prog="python -m bench.plot_service", description=__doc__, name="service")
    if started is None:
        return 2
    plt, data, out = started
    from matplotlib.lines import Line2D  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    rows = {(r["operation"], r["contender"]): r for r in data["throughput"]}
    env = data["environment"]
    cfg = data["config"]
    rss = data["rss"]
    target_ratio = cfg["targets"]["vs_boto3"]
    target_rss = cfg["targets"]["rss_mib"]

    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(13, 5), dpi=120, gridspec_kw={"width_ratios": [1, 1.4]}
    )

    # -- throughput bars -------------------------------------------------------------------
    width = 0.2
    present = [c for c in CONTENDERS if any((op, c) in rows for op in OPERATIONS)]
    for who in present:
        xs, heights, lo, hi, ops = [], [], [], [], []
        for j, op in enumerate(OPERATIONS):
            row = rows.get((op, who))
            if row is None:
                continue
            here = [c for c in present if (op, c) in rows]  # centre each group on its tick
            xs.append(j + (here.index(who) - (len(here) - 1) / 2) * width)
            heights.append(row["mbps"])
            lo.append(row["mbps"] - min(row["mbps_runs"]))
            hi.append(max(row["mbps_runs"]) - row["mbps"])
            ops.append(op)
        label = next(rows[(op, who)]["label"] for op in OPERATIONS if (op, who) in rows)
        bars = ax.bar(
            xs,
            heights,
            width,
            yerr=[lo, hi],
            capsize=3,
            label=label,
            color=COLORS[who],
            edgecolor="#333333" if who == "boto3" else None,
            linewidth=0.6,
        )
        for bar, op in zip(bars, ops, strict=True):
            row = rows[(op, who)]
            text = f"{row['mbps']:.0f}"
            if who != "boto3":
                text += f"\n{row['vs_boto3']:.2f}x"
            label_bar(ax, bar, text)
    for j, op in enumerate(OPERATIONS):
        base = rows.get((op, "boto3"))
        if base is not None:
            y = base["mbps"] * target_ratio
            ax.hlines(y, j - 0.45, j + 0.45, colors="#c53030", linestyles="dashed", linewidth=1)
    ax.plot([], [], color="#c53030", linestyle="dashed", label=f"target {target_ratio}x boto3")
    size = cfg["size_mib"]
    size_text = f"{size // 1024} GiB" if size % 1024 == 0 else f"{size} MiB"
    ax.set_xticks(range(len(OPERATIONS)), [f"{op} {size_text}" for op in OPERATIONS])
    ax.set_ylabel("MB/s (10^6 plaintext bytes/s, median, min..max)")
    top = max(max(r["mbps_runs"]) for r in data["throughput"])
    ax.set_ylim(0, top * 1.3)
    ax.set_title("Throughput over loopback: reelvault (gRPC) vs boto3 to SeaweedFS", fontsize=10)
    ax.legend(loc="upper left", fontsize=7)
    ax.grid(axis="y", alpha=0.3)

    # -- RSS over time ------------------------------------------------------------------
    series = rss["series"]
    ts = [t for t, _ in series]
    mib = [m for _, m in series]
    for w in rss["windows"]:
        color = WINDOW_COLORS.get((w["operation"], w["contender"]), "#dddddd")
        alpha = 0.25 if w["contender"] == "reelvault" else 0.35
        ax2.axvspan(w["t_start"], w["t_end"], color=color, alpha=alpha, linewidth=0)
    ax2.plot(ts, mib, color="#1a202c", linewidth=1.0)
    ax2.axhline(target_rss, color="#c53030", linestyle="dashed", linewidth=1)
    ax2.axhline(rss["baseline_mib"], color="#718096", linestyle="dotted", linewidth=1)
    warm = [w for w in rss["windows"] if w["round"] < cfg["warmup"]]
    if warm:
        ax2.axvline(max(w["t_end"] for w in warm), color="#718096", linewidth=0.8)
        ax2.annotate(
            "warm-up | timed rounds",
            (max(w["t_end"] for w in warm), 5),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize=7,
            color="#4a5568",
        )
    ax2.set_ylim(0, max([*mib, target_rss]) * 1.15)
    ax2.set_xlabel("seconds since the server was ready")
    ax2.set_ylabel("server RSS (MiB), sampled every 50 ms")
    ax2.set_title(
        f"reelvault serve RSS: peak {rss['peak_vault_mib']:.0f} MiB, "
        f"before transfers {rss['baseline_mib']:.0f} MiB",
        fontsize=10,
    )
    ax2.legend(
        handles=[
            Patch(
                color=WINDOW_COLORS[("upload", "reelvault")], alpha=0.3, label="reelvault upload"
            ),
            Patch(
                color=WINDOW_COLORS[("download", "reelvault")],
                alpha=0.3,
                label="reelvault download",
            ),
            Patch(color="#dddddd", alpha=0.6, label="boto3 and relay transfers (control)"),
            Line2D([], [], color="#c53030", linestyle="dashed", label=f"target {target_rss} MiB"),
            Line2D([], [], color="#718096", linestyle="dotted", label="before transfers"),
        ],
        loc="lower right",
        fontsize=7,
    )
    ax2.grid(alpha=0.3)

    extra = env.get("server_extra_env") or {}
    note = " EXPERIMENT: " + " ".join(f"{k}={v}" for k, v in extra.items()) if extra else ""
    return finish(
        fig,
        out,
        f"{env['cpu']} x{env['cpu_count']}, {env['python']}, grpcio {env['grpcio']}, boto3 "
        f"{env['boto3']}, {env['seaweedfs']}; part size {env['part_size'] // (1 << 20)} MiB, "
        f"{env['max_in_flight']} in flight; median of {cfg['runs']} interleaved runs.{note}",
    )


if __name__ == "__main__":
    sys.exit(main())
