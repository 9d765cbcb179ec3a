"""Results files to tables: the bench's figures, limit, ratios and targets; any results JSON as Markdown.

    python -m benchmarks.report --markdown benchmarks/results/bench.json   # the docs' tables
    python -m benchmarks.report benchmarks/results/decode.json            # the printed table again

Every results file names its benchmark; its module's `table(result, markdown)` renders it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from benchmarks import memory, results, tables
from benchmarks.model import FLOPS_PER_IMAGE

GB = 1e9  # the memory target is in GB (10^9 bytes); RSS figures are printed in GiB
JOBS = {
    "ours": "(c) ours float32",
    "stock_peer": "(b) stock peer",
    "tuned_peer": "(b) tuned peer",
    "ours_bfloat16": "(c) ours bfloat16",
}
# (ratio, size, at least, what it says); and the float32 job's whole tree at most MEMORY_TARGET_GB.
TARGETS = (
    ("ours/tuned_peer", "640x480", 1.00, "ours / tuned peer >= 1.00 at 640x480"),
    ("ours/tuned_peer", "12mp", 1.30, "ours / tuned peer >= 1.30 at 12mp"),
    ("ours/L", "640x480", 0.95, "ours / L >= 0.95 at 640x480"),
    ("ours/L", "12mp", 0.95, "ours / L >= 0.95 at 12mp"),
)
MEMORY_TARGET_GB = 1.8


def limit(a: float, n: int, d: float) -> float:
    """L = 1 / (1/a + 1/(n·d)): n cores decoding at d images/s each and running a model whose
    best rate on all n cores is a, with nothing wasted (each image costs its decode plus its
    share of the model, on the same cores)."""
    return 1.0 / (1.0 / a + 1.0 / (n * d))


def derive(result: dict) -> dict:
    """The figures computed from the measured ones: L, ratios per size, and each target's verdict."""
    cores = result["machine"]["cores"]
    sizes = {}
    for name, entry in result["sizes"].items():
        bare = _bare(result, name)
        a = bare["float32"]["best"]
        d = entry["decode_images_per_s_per_core"]
        rate = {job: entry[job]["steady_images_per_s"] for job in JOBS if job in entry}
        row = {"L": limit(a, cores, d), "ours/a": rate["ours"] / a}
        row["ours/L"] = rate["ours"] / row["L"]
        for peer in ("tuned_peer", "stock_peer"):
            row[f"ours/{peer}"] = rate["ours"] / rate[peer]
        if "ours_bfloat16" in rate:
            row["L_bfloat16"] = limit(bare["bfloat16"]["best"], cores, d)
            row["ours_bfloat16/L_bfloat16"] = rate["ours_bfloat16"] / row["L_bfloat16"]
            row["ours_bfloat16/a"] = rate["ours_bfloat16"] / a
        sizes[name] = row
    verdicts = []
    for ratio, size, least, what in TARGETS:
        if size in sizes:
            value = sizes[size][ratio]
            verdicts.append(_verdict(what, value, value >= least, (least - value) / least))
    trees = [entry["ours"]["memory"]["total_peak_rss_gib"] * 2**30 / GB for entry in result["sizes"].values()]
    if trees:
        peak = max(trees)
        what = f"float32 job's whole tree <= {MEMORY_TARGET_GB:g} GB"
        verdicts.append(
            _verdict(what, peak, peak <= MEMORY_TARGET_GB, (peak - MEMORY_TARGET_GB) / MEMORY_TARGET_GB)
        )
    return {"sizes": sizes, "targets": verdicts}


def _bare(result: dict, size: str) -> dict:
    """The bare model that bounds a size's jobs: measured in that size's rounds (results before
    2026-12-03 measured it in the first size's rounds only, for every size)."""
    return result["sizes"][size].get("model", result["model"])


def _verdict(what: str, value: float, met: bool, short: float) -> dict:
    return {"target": what, "measured": value, "met": met, "missed_by": None if met else short}


def _verdict_text(verdict: dict) -> str:
    return "met" if verdict["met"] else f"missed by {100 * verdict['missed_by']:.1f}%"


def _model_lines(result: dict) -> list[str]:
    lines = []
    for precision, entry in result["model"].items():
        per_batch = ", ".join(
            f"b{b}: {r:.1f}" if r else f"b{b}: out of memory" for b, r in entry["images_per_s"].items()
        )
        lines.append(
            f"(a) bare model {precision}: best {entry['best']:.1f} img/s = "
            f"{entry['gflop_per_s']:.0f} GFLOP/s ({per_batch}); load {entry['load_s']:.1f} s"
        )
        for conv, rates in entry.get("by_conv_batch", {}).items():  # results of 0.2.0 have none
            what = "on the whole batch" if conv == "whole" else f"{conv} images at a time"
            per_batch = ", ".join(f"b{b}: {r:.1f}" if r else f"b{b}: -" for b, r in rates.items())
            lines.append(f"    convolutions {what}: {per_batch}")
    return lines


def _weights_line(result: dict) -> str:
    w = result["weights"]
    what = f"synthesized, UNTRAINED ({w['made_with']})" if w["made_with"] else w["file"]
    return (
        f"weights: {what}, sha256 {w['sha256'][:12]}…; batch size {result['batch_size']} (ours and the "
        f"tuned peer); {_rounds(result['rounds'], all('model' in e for e in result['sizes'].values()))}"
    )


def _rounds(n: int, per_size: bool = False) -> str:
    if n == 1:
        return "1 round"
    bare = "the bare model once in each round of each size" if per_size else "the bare model once in each"
    return f"{n} interleaved rounds ({bare}), fastest wall per size and rate per batch size"


def _rates(result: dict) -> list[tuple[str, ...]]:
    rows = []
    for name, entry in result["sizes"].items():
        row = result["derived"]["sizes"][name]
        n = result["machine"]["cores"]
        rows.append((name, "(d) decode, 1 core", f"{entry['decode_images_per_s_per_core']:.1f}", "", ""))
        if "model" in entry:
            best = entry["model"]["float32"]["best"]
            rows.append((name, "(a) bare model float32, best", f"{best:.2f}", "", ""))
        rows.append((name, f"L, float32 on {n} cores", f"{row['L']:.2f}", "", ""))
        for job, label in JOBS.items():
            if job in entry:
                e = entry[job]
                rows.append((name, label, f"{e['steady_images_per_s']:.2f}", f"{e['startup_s']:.1f}",
                             f"{e['memory']['total_peak_rss_gib']:.2f}"))  # fmt: skip
    return rows


def _ratio_lines(result: dict) -> list[str]:
    lines = []
    for name, row in result["derived"]["sizes"].items():
        line = (
            f"{name}: ours/L = {row['ours/L']:.3f}, ours/tuned peer = {row['ours/tuned_peer']:.3f}, "
            f"ours/stock peer = {row['ours/stock_peer']:.3f}, ours/a = {row['ours/a']:.3f}"
        )
        if "L_bfloat16" in row:
            line += (
                f"; bfloat16: L = {row['L_bfloat16']:.2f}, ours/L = {row['ours_bfloat16/L_bfloat16']:.3f}, "
                f"ours/a(float32) = {row['ours_bfloat16/a']:.3f}"
            )
        lines.append(line)
    return lines


def _memory_rows(result: dict) -> list[tuple[str, ...]]:
    rows = []
    jobs = [(name, JOBS[job], entry[job]["memory"]) for name, entry in result["sizes"].items()
            for job in JOBS if job in entry]  # fmt: skip
    jobs += [
        ("640x480", f"ours, {key.replace('_', ' ')}", tree) for key, tree in result.get("threads", {}).items()
    ]
    for name, label, tree in jobs:
        parts = " + ".join(f"{process} {gib:.2f}" for process, gib in memory.by_process(tree).items())
        rows.append((name, label, f"{tree['total_peak_rss_gib']:.2f}", parts))
    return rows


def _target_rows(result: dict) -> list[tuple[str, ...]]:
    return [
        (v["target"], f"{v['measured']:.3f}" if "GB" not in v["target"] else f"{v['measured']:.2f} GB",
         _verdict_text(v))
        for v in result["derived"]["targets"]
    ]  # fmt: skip


def table(result: dict, markdown: bool = False) -> str:
    """The bench's table: what it prints and writes to bench.txt, or (markdown) the docs' version."""
    rates = tables.table(("images", "what", "img/s", "start-up s", "tree peak GiB"), _rates(result),
                         markdown=markdown, align="llrrr")  # fmt: skip
    memory_table = tables.table(("images", "job", "tree peak GiB", "processes at that instant (GiB)"),
                                _memory_rows(result), markdown=markdown, align="llrl")  # fmt: skip
    targets = tables.table(("target", "measured", "verdict"), _target_rows(result), markdown=markdown,
                           align="lrl")  # fmt: skip
    flops = f"(a) counts {FLOPS_PER_IMAGE / 1e9:.2f} GFLOP per 224×224 image (multiply-adds twice)"
    head = [results.machine_line(result["machine"]), _weights_line(result), *_model_lines(result), flops]
    ratios = _ratio_lines(result)
    if markdown:  # one list item per line; plain lines would run into one paragraph
        head, ratios = [f"- {line}" for line in head], [f"- {line}" for line in ratios]
    sections = [
        head,
        [rates],
        ratios,
        ["Memory: each job's whole process tree at its peak (RSS summed over processes):", "", memory_table],
        ["Targets:", "", targets],
    ]
    return "\n\n".join("\n".join(section) for section in sections)


def plot(result: dict, path: str) -> str:
    """Bare-model images/s against batch size, with each pipeline's steady rate as a line; returns path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for precision, entry in result["model"].items():
        sizes = [int(b) for b, r in entry["images_per_s"].items() if r]
        rates = [r for r in entry["images_per_s"].values() if r]
        axes.plot(sizes, rates, marker="o", label=f"bare model {precision}")
    styles = iter([("C2", "--"), ("C3", ":"), ("C4", "-."), ("C5", "--")])
    for name, entry in result["sizes"].items():
        for key, precision in (("ours", "float32"), ("ours_bfloat16", "bfloat16")):
            if key in entry:
                color, style = next(styles, ("C6", "--"))
                axes.axhline(entry[key]["steady_images_per_s"], color=color, linestyle=style,
                             label=f"pipeline {precision}, {name} JPEGs")  # fmt: skip
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size")
    axes.set_ylabel("images/s")
    axes.set_title(f"VGG16 throughput, {result['machine']['cpu']}, {result['machine']['cores']} cores")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


RENDERERS = {
    "bench": "benchmarks.report",
    "decode": "benchmarks.decode",
    "index_recall": "benchmarks.index_recall",
    "pca": "benchmarks.pca",
    "near_duplicates": "benchmarks.near_duplicates",
    "gpu": "benchmarks.gpu",
    "shards": "benchmarks.shards",
    "host_path": "benchmarks.host_path",
    "decoders": "benchmarks.decoders",
    "memory_budget": "benchmarks.memory_budget",
    "decode_load": "benchmarks.decode_load",
    "watch": "benchmarks.watch",
    "watch_flink": "benchmarks.watch",
}


def render(result: dict, markdown: bool) -> str:
    """A results file's table, by the module of the benchmark that wrote it."""
    name = result.get("benchmark")
    if name not in RENDERERS:
        raise ValueError(
            f"not a benchmark results file: 'benchmark' is {name!r}, expected one of {sorted(RENDERERS)}"
        )
    text = importlib.import_module(RENDERERS[name]).table(result, markdown=markdown)
    if markdown:  # the docs say where each table comes from
        text += f"\n\nMeasured with `{result['command']}` ({result['date']})."
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="results JSON files (benchmarks/results/*.json)")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables, for docs/benchmarks.md")
    args = parser.parse_args(argv)
    out = []
    for path in args.files:
        try:
            with open(path) as handle:
                result = json.load(handle)
            out.append(render(result, args.markdown))
        except (OSError, json.JSONDecodeError) as error:
            print(f"error: cannot read {path}: {error}", file=sys.stderr)
            return 2
        except ValueError as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            return 2
        except KeyError as error:
            print(
                f"error: {path}: no field {error}, which a {result['benchmark']} results file has",
                file=sys.stderr,
            )
            return 2
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
