#!/usr/bin/env python3
"""Plot and tabulate the output of the `surgery_sweep` example (JSON lines, one file per model).

    python3 scripts/surgery_plot.py OUT.png NAME=SWEEP.jsonl [NAME=SWEEP.jsonl ...]

Draws, for each model, perplexity against layers removed for the three choices of layers
(lowest Block Influence, the last layers, random: the mean of the seeds with their range) and
prints the Markdown table of docs/benchmarks.md. Needs matplotlib (`pip install matplotlib`).
"""

import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    """The sweep's rows: the analysis line, then one line per measured model."""
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip().startswith("{")]
    return lines[0], [row for row in lines[1:] if "strategy" in row]


def by_count(rows):
    """{strategy family: {layers removed: [rows]}}, random seeds grouped as `random`."""
    table = defaultdict(lambda: defaultdict(list))
    for row in rows:
        family = "random" if row["strategy"].startswith("random") else row["strategy"]
        table[family][len(row["removed"])].append(row)
    return table


def markdown(name, analysis, rows):
    """The table of one model: a line per count and strategy."""
    base = next(r for r in rows if r["strategy"] == "none")
    out = [
        f"**{name}** ({analysis['layers']} layers; baseline perplexity "
        f"{base['perplexity']:.2f}, {base['bytes'] / 1e6:.1f} MB, "
        f"{base['decode_tok_s']:.1f} tok/s decode)",
        "",
        "| layers removed | choice | layers | perplexity | size MB | decode tok/s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["strategy"] == "none":
            continue
        removed = ",".join(str(n) for n in row["removed"])
        out.append(
            f"| {len(row['removed'])} | {row['strategy']} | {removed} | "
            f"{row['perplexity']:.2f} | {row['bytes'] / 1e6:.1f} | {row['decode_tok_s']:.1f} |"
        )
    return "\n".join(out)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    png, sweeps = sys.argv[1], [arg.split("=", 1) for arg in sys.argv[2:]]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 4.5), squeeze=False)
    for ax, (name, path) in zip(axes[0], sweeps):
        analysis, rows = load(path)
        base = next(r for r in rows if r["strategy"] == "none")["perplexity"]
        table = by_count(rows)
        styles = {
            "block_influence": ("lowest Block Influence", "tab:blue", "o"),
            "last": ("last layers", "tab:red", "s"),
        }
        for family, (label, color, marker) in styles.items():
            counts = sorted(table[family])
            ppl = [table[family][n][0]["perplexity"] for n in counts]
            ax.plot([0] + counts, [base] + ppl, marker=marker, color=color, label=label)
        counts = sorted(table["random"])
        mean = [sum(r["perplexity"] for r in table["random"][n]) / len(table["random"][n])
                for n in counts]
        low = [m - min(r["perplexity"] for r in table["random"][n]) for m, n in zip(mean, counts)]
        high = [max(r["perplexity"] for r in table["random"][n]) - m for m, n in zip(mean, counts)]
        seeds = len(table["random"][counts[0]])
        label = "random layers" + (f" (mean, range of {seeds} seeds)" if seeds > 1 else "")
        ax.errorbar([0] + counts, [base] + mean, yerr=[[0] + low, [0] + high], marker="^",
                    color="tab:gray", capsize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("layers removed")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_title(f"{name} ({analysis['layers']} layers)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        print(markdown(name, analysis, rows))
        print()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
