"""Plots of the origin benchmark: the whole GET, 64 KiB ranges under load, token
verification and the workers' RSS.

    .venv/bin/python -m bench.plot_origin [--json bench/results/origin.json]
                                          [--out docs/img/bench-origin.png]

Top left: MB/s of the whole GET per contender (median, min..max of the runs). Top right:
64 KiB ranges per second under wrk (median, min..max), with p50/p99 latency on each bar.
Bottom left: microseconds per token verification beside the raw primitives. Bottom right:
the RSS of the origin's and the relay's workers (summed) through the run, with the range
loads shaded.

Needs matplotlib, which is not a project dependency: ``.venv/bin/pip install matplotlib``.
"""

from __future__ import annotations

import sys
from typing import Any

from bench._plot import finish, label_bar, start

CONTENDERS = ("origin", "relay", "store")
COLORS = {"origin": "#2b6cb0", "relay": "#d69e2e", "store": "#8c8c8c"}
TOKENS = (
    ("token_ed25519", "verify\nEd25519 token"),
    ("raw_ed25519_verify", "raw Ed25519\nverify"),
    ("token_hmac", "verify\nHMAC token"),
    ("raw_hmac_sha256", "raw\nHMAC-SHA256"),
)


def above(ax: Any, x: float, y: float, text: str) -> None:
    """``text`` just above ``y`` at ``x`` (the top of an error bar)."""
    ax.annotate(
        text,
        (x, y),
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=8,
    )


def main(argv: list[str] | None = None) -> int:
    started = start(argv, prog="python -m bench.plot_origin", description=__doc__, name="origin")
    if started is None:
        return 2
    plt, data, out = started
    from matplotlib.patches import Patch  # noqa: PLC0415

    env, cfg = data["environment"], data["config"]
    get = {r["contender"]: r for r in data["get"]}
    ranges = {r["contender"]: r for r in data["ranges"]["rows"]}
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), dpi=110)
    (ax_get, ax_rng), (ax_tok, ax_rss) = axes

    size = cfg["size_mib"]
    size_text = f"{size // 1024} GiB" if size % 1024 == 0 else f"{size} MiB"
    for i, who in enumerate(CONTENDERS):
        row = get[who]
        runs = row["mbps_runs"]
        ax_get.bar(
            i,
            row["mbps"],
            0.6,
            yerr=[[row["mbps"] - min(runs)], [max(runs) - row["mbps"]]],
            capsize=3,
            color=COLORS[who],
        )
        text = f"{row['mbps']:.0f}" + ("" if who == "relay" else f"\n{row['vs_relay']:.2f}x relay")
        above(ax_get, i, max(runs), text)
    target = cfg["targets"]["get_vs_relay"]
    ax_get.axhline(
        get["relay"]["mbps"] * target,
        color="#c53030",
        linestyle="dashed",
        linewidth=1,
        label=f"target {target}x the relay",
    )
    ax_get.set_xticks(range(len(CONTENDERS)), [get[w]["label"] for w in CONTENDERS], fontsize=7)
    ax_get.set_ylabel("MB/s (median, min..max)")
    ax_get.set_ylim(0, max(max(r["mbps_runs"]) for r in get.values()) * 1.35)
    ax_get.set_title(f"GET {size_text}, one http.client reader", fontsize=10)
    ax_get.legend(loc="upper left", fontsize=7)
    ax_get.grid(axis="y", alpha=0.3)

    for i, who in enumerate(CONTENDERS):
        row = ranges[who]
        runs = row["rps_runs"]
        ax_rng.bar(
            i,
            row["rps"],
            0.6,
            yerr=[[row["rps"] - min(runs)], [max(runs) - row["rps"]]],
            capsize=3,
            color=COLORS[who],
        )
        text = f"{row['rps']:.0f}/s\np50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.0f} ms"
        if who != "relay":
            text += f"\n{row['vs_relay']:.2f}x relay"
        above(ax_rng, i, max(runs), text)
    target = cfg["targets"]["range_vs_relay"]
    ax_rng.axhline(
        ranges["relay"]["rps"] * target,
        color="#c53030",
        linestyle="dashed",
        linewidth=1,
        label=f"target {target}x the relay",
    )
    ax_rng.set_xticks(range(len(CONTENDERS)), [ranges[w]["label"] for w in CONTENDERS], fontsize=7)
    ax_rng.set_ylabel("requests/s (median, min..max)")
    ax_rng.set_ylim(0, max(max(r["rps_runs"]) for r in ranges.values()) * 1.45)
    ax_rng.set_title(
        f"64 KiB ranges, wrk -c{cfg['connections']} -t{cfg['wrk_threads']}, "
        f"{cfg['range_seconds']:g} s runs",
        fontsize=10,
    )
    ax_rng.legend(loc="upper left", fontsize=7)
    ax_rng.grid(axis="y", alpha=0.3)

    us = data["tokens"]["us_per_op"]
    for i, (name, label) in enumerate(TOKENS):
        bar = ax_tok.bar(i, us[name], 0.6, color="#2b6cb0" if "token" in name else "#8c8c8c")[0]
        label_bar(ax_tok, bar, f"{us[name]:.1f} us")
        ax_tok.text(i, -0.02, label, transform=ax_tok.get_xaxis_transform(), ha="center", va="top")
    ax_tok.set_xticks([])
    ax_tok.set_ylabel("microseconds per verification (median)")
    ax_tok.set_ylim(0, max(us[n] for n, _ in TOKENS) * 1.25)
    ax_tok.set_title("token verification in process", fontsize=10)
    ax_tok.grid(axis="y", alpha=0.3)

    rss = data["rss"]
    for who in ("origin", "relay"):
        series = rss[who]["series"]
        ax_rss.plot(
            [t for t, _ in series],
            [m for _, m in series],
            color=COLORS[who],
            linewidth=1.0,
            label=f"{who} workers (sum of {len(rss[who]['pids'])})",
        )
    for who, t0, t1 in data["ranges"]["windows"]:
        ax_rss.axvspan(t0, t1, color=COLORS[who], alpha=0.15, linewidth=0)
    handles, _ = ax_rss.get_legend_handles_labels()
    handles += [Patch(color=COLORS[w], alpha=0.3, label=f"{w} under range load") for w in COLORS]
    ax_rss.legend(handles=handles, loc="lower right", fontsize=7)
    ax_rss.set_ylim(0, max(m for who in ("origin", "relay") for _, m in rss[who]["series"]) * 1.2)
    ax_rss.set_xlabel("seconds since the workers were up")
    ax_rss.set_ylabel(f"RSS (MiB), sampled every {rss['interval_s'] * 1e3:.0f} ms")
    ax_rss.set_title("worker RSS through the run", fontsize=10)
    ax_rss.grid(alpha=0.3)

    extra = env.get("server_extra_env") or []
    note = f" EXPERIMENT: {' '.join(extra)}" if extra else ""
    return finish(
        fig,
        out,
        f"{env['cpu']} x{env['cpu_count']}, {env['python']}, uvicorn {env['uvicorn']}, "
        f"{env['seaweedfs']}, {env['wrk']}; {cfg['workers']} workers, catalog "
        f"{env['catalog']}; median of {cfg['runs']} interleaved runs.{note}",
    )


if __name__ == "__main__":
    sys.exit(main())
