#!/usr/bin/env python3
"""Plots perf/maxrate.sh's steps: one PNG per scenario, two panels
(achieved rate against offered rate; corrected p99 against offered rate,
log scale, with the pass bound), every server on the same axes.

    python3 perf/plot-maxrate.py STEPS.tsv OUT_PREFIX [P99_MAX_MS]

Writes OUT_PREFIX-<scenario>.png and prints the paths written, one a line.
Needs matplotlib (`python3 -m pip install matplotlib`).
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

TITLES = {
    "register": "REGISTER with digest auth (registrations/s)",
    "register_tcp": "REGISTER with digest auth over TCP (registrations/s)",
    "register_tls": "REGISTER with digest auth over TLS (registrations/s)",
    "options": "OPTIONS (requests/s)",
    "calls": "calls (calls/s)",
}
STYLE = {
    "sipshard": dict(color="tab:blue", marker="o"),
    "kamailio": dict(color="tab:red", marker="s"),
    "floor": dict(color="tab:grey", marker="^"),
}
LABEL = {"sipshard": "sipshard", "kamailio": "Kamailio 5.6", "floor": "floor (bare C responder)"}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, prefix = sys.argv[1], sys.argv[2]
    bound = float(sys.argv[3]) if len(sys.argv) > 3 else None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    scenarios = []
    for r in rows:
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    for scen in scenarios:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
        top = 0.0
        for srv in ("sipshard", "kamailio", "floor"):
            pts = [r for r in rows if r["scenario"] == scen and r["server"] == srv]
            # bisection steps come after the failed one: draw in rate order
            pts.sort(key=lambda r: float(r["offered"]))
            if not pts:
                continue
            x = [float(r["offered"]) for r in pts]
            ach = [float(r["achieved"]) for r in pts]
            p99 = [max(float(r["p99_ms"]), 1e-3) for r in pts]
            style = STYLE.get(srv, {})
            ax1.plot(x, ach, label=LABEL.get(srv, srv), **style)
            ax2.plot(x, p99, label=LABEL.get(srv, srv), **style)
            # failed steps: hollow marker
            bad = [i for i, r in enumerate(pts) if r["pass"] != "1"]
            for ax, ys in ((ax1, ach), (ax2, p99)):
                ax.scatter(
                    [x[i] for i in bad],
                    [ys[i] for i in bad],
                    s=140,
                    facecolors="none",
                    edgecolors="black",
                    zorder=5,
                )
            top = max(top, max(x))
        ax1.plot([0, top], [0, top], ls="--", color="grey", lw=1, label="achieved = offered")
        ax1.set_xlabel("offered rate /s")
        ax1.set_ylabel("achieved rate /s")
        ax1.set_xlim(left=0)
        ax1.set_ylim(bottom=0)
        ax1.grid(True, alpha=0.3)
        ax1.legend()
        ax1.set_title("throughput")
        if bound:
            ax2.axhline(bound, ls="--", color="grey", lw=1, label=f"bound {bound:g} ms")
        ax2.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax2.yaxis.set_major_formatter(plain)
        ax2.yaxis.set_minor_formatter(plain)
        ax2.set_xlabel("offered rate /s")
        ax2.set_ylabel("p99 latency ms (corrected)")
        ax2.set_xlim(left=0)
        ax2.grid(True, which="both", alpha=0.3)
        ax2.legend()
        ax2.set_title("p99 latency")
        fig.suptitle(f"{TITLES.get(scen, scen)}: circled = step failed")
        fig.tight_layout()
        out = f"{prefix}-{scen}.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        print(out)


if __name__ == "__main__":
    main()
