"""Turns benchmarks.bench's figures into the printed table, the ratios and the batch-size plot."""

from __future__ import annotations


def ratios(results: dict) -> dict[str, dict[str, float]]:
    """(c)/(a), (c)/(b) and bfloat16 pipeline / float32 model, per image size."""
    model = results["model"]["float32"]["best"]
    out = {}
    for name, entry in results["sizes"].items():
        ours = entry["ours"]["steady_images_per_s"]
        row = {"c/a": ours / model, "c/b": ours / entry["peer"]["steady_images_per_s"]}
        if "ours_bfloat16" in entry:
            row["bf16_pipeline/a"] = entry["ours_bfloat16"]["steady_images_per_s"] / model
        out[name] = row
    return out


def report(results: dict, plot_path: str | None = None) -> str:
    lines = []
    m = results["machine"]
    device = results["model"]["float32"].get("device", "?")
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores, TF {m['tensorflow']}, model on {device}")
    for precision, entry in results["model"].items():
        per_batch = ", ".join(f"b{b}: {r:.1f}" for b, r in entry["images_per_s"].items())
        lines.append(
            f"(a) bare model {precision}: best {entry['best']:.1f} img/s ({per_batch}); "
            f"load {entry['load_s']:.1f} s"
        )
    header = f"{'images':<9} {'what':<24} {'img/s':>7} {'start-up s':>10} {'peak RSS GiB':>11}"
    lines += ["", header, "-" * len(header)]
    for name, entry in results["sizes"].items():
        lines.append(f"{name:<9} {'(d) decode, 1 core':<24} {entry['decode_images_per_s_per_core']:>7.1f}")
        for key, label in (("ours", "(c) pipeline float32"), ("peer", "(b) peer RunInference"),
                           ("ours_bfloat16", "(c) pipeline bfloat16")):  # fmt: skip
            if key in entry:
                e = entry[key]
                lines.append(
                    f"{name:<9} {label:<24} {e['steady_images_per_s']:>7.1f} {e['startup_s']:>10.1f} "
                    f"{e['peak_rss_gib']:>11.2f}"
                )
    lines.append("")
    for name, row in ratios(results).items():
        lines.append(f"{name}: " + ", ".join(f"{k} = {v:.3f}" for k, v in row.items()))
    if "memory" in results:
        lines.append(
            "peak RSS by threads: " + ", ".join(f"{k} {v:.2f} GiB" for k, v in results["memory"].items())
        )
    if plot_path:
        _plot(results, plot_path)
        lines.append(f"plot: {plot_path}")
    return "\n".join(lines)


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for precision, entry in results["model"].items():
        sizes = [int(b) for b in entry["images_per_s"]]
        axes.plot(sizes, list(entry["images_per_s"].values()), marker="o", label=f"bare model {precision}")
    styles = iter([("C2", "--"), ("C3", ":"), ("C4", "-."), ("C5", "--")])
    for name, entry in results["sizes"].items():
        for key, precision in (("ours", "float32"), ("ours_bfloat16", "bfloat16")):
            if key in entry:
                color, style = next(styles, ("C6", "--"))
                axes.axhline(entry[key]["steady_images_per_s"], color=color, linestyle=style,
                             label=f"pipeline {precision}, {name} JPEGs")  # fmt: skip
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size")
    axes.set_ylabel("images/s")
    axes.set_title(f"VGG16 throughput, {results['machine']['cores']} cores")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
