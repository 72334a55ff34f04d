"""Bar chart of the crypto benchmark: MB/s per contender, encrypt and decrypt.

    .venv/bin/python -m bench.plot_crypto [--json bench/results/crypto.json]
                                          [--out docs/img/bench-crypto.png]

Needs matplotlib, which is not a project dependency: ``.venv/bin/pip install matplotlib``.
"""

from __future__ import annotations

import sys

from bench._plot import finish, label_bar, start

CONTENDERS = ("raw", "reelvault", "sdk")
COLORS = {"raw": "#8c8c8c", "reelvault": "#2b6cb0", "sdk": "#dd6b20"}
OPERATIONS = ("encrypt", "decrypt")


def main(argv: list[str] | None = None) -> int:
    started = start(argv, prog="python -m bench.plot_crypto", description=__doc__, name="crypto")
    if started is None:
        return 2
    plt, data, out = started

    rows = {(r["operation"], r["contender"]): r for r in data["throughput"]}
    env = data["environment"]
    cfg = data["config"]

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    width = 0.26
    for i, who in enumerate(CONTENDERS):
        xs, heights = [], []
        for j, op in enumerate(OPERATIONS):
            if (op, who) in rows:
                xs.append(j + (i - 1) * width)
                heights.append(rows[(op, who)]["mbps"])
        size = cfg["sdk_size_mib"] if who == "sdk" else cfg["size_mib"]
        label = f"{rows[(OPERATIONS[0], who)]['label']} ({size} MiB)"
        bars = ax.bar(xs, heights, width, label=label, color=COLORS[who])
        for bar, op in zip(bars, [o for o in OPERATIONS if (o, who) in rows], strict=True):
            row = rows[(op, who)]
            text = f"{row['mbps']:.0f}"
            if who != "raw":
                text += f"\n{row['vs_raw']:.2f}x raw"
            label_bar(ax, bar, text)

    ax.set_xticks(range(len(OPERATIONS)), [f"{op} (1 MiB chunks)" for op in OPERATIONS])
    ax.set_ylabel("MB/s (10^6 plaintext bytes/s, median)")
    top = max(r["mbps"] for r in data["throughput"])
    ax.set_ylim(0, top * 1.25)
    ax.set_title(
        "AES-256-GCM, 64 KiB frames: raw cryptography vs reelvault vs aws-encryption-sdk",
        fontsize=10,
    )
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return finish(
        fig,
        out,
        f"{env['cpu']} x{env['cpu_count']}, {env['python']}, cryptography "
        f"{env['cryptography']}, aws-encryption-sdk {env['aws_encryption_sdk']}, "
        f"median of {cfg['runs']} runs",
    )


if __name__ == "__main__":
    sys.exit(main())
