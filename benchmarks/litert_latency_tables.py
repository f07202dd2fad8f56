"""The markdown tables of ``litert_latency.py``'s result JSON (docs/export.md).

Kept apart from the measurement so that ``--markdown`` re-prints the tables
of a stored result without importing Keras or LiteRT.
"""


def markdown(result):
    """The tables of docs/export.md from a result JSON."""
    lines = []
    for table in result["latency"]:
        threads = table["num_threads"] or "default"
        lines += [
            f"{table['thresholds']} thresholds, LiteRT batch 1, num_threads={threads}; "
            f"monolithic {table['monolithic_ms']:.3f} ms/image.",
            "",
            "| budget | test FLOPs fraction | staged ms | staged / monolithic "
            "| staged / (fraction × monolithic) | target ms | target met | stage invokes ms "
            "| overhead beyond isolated invokes ms | all stages back to back ms |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in table["budgets"]:
            lines.append(
                f"| {row['budget']:.0%} | {row['test_flops_fraction']:.3f} | {row['staged_ms']:.3f} "
                f"| {row['ratio_staged_to_monolithic']:.3f} "
                f"| {row['staged_ms'] / (row['test_flops_fraction'] * row['monolithic_ms']):.2f} "
                f"| {row['target_ms']:.3f} "
                f"| {'yes' if row['target_met'] else 'no'} | {row['stage_invoke_ms']:.3f} "
                f"| {row['python_overhead_ms']:.3f} | {row.get('all_stages_ms', float('nan')):.3f} |"
            )
        lines.append("")
    lines += [
        "| quantization | stage files KB | monolithic KB | monolithic acc. (Δ vs Keras) "
        "| monolithic argmax agreement | staged@50% acc. (Δ) | staged@50% agreement | same exit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["quantization"]:
        lines.append(
            f"| {row['quantization']} | {row['stages_total_bytes'] / 1024:.0f} "
            f"| {row['monolithic_bytes'] / 1024:.0f} "
            f"| {row['monolithic_accuracy']:.4f} ({row['monolithic_accuracy_change']:+.4f}) "
            f"| {row['monolithic_argmax_agreement']:.4f} "
            f"| {row['staged_50_accuracy']:.4f} ({row['staged_50_accuracy_change']:+.4f}) "
            f"| {row['staged_50_argmax_agreement']:.4f} | {row['staged_50_same_exit']:.4f} |"
        )
    lines += achieved_markdown(result)
    return "\n".join(lines)


def achieved_markdown(result):
    """Achieved GFLOP/s per mode and thread count against the measured peaks."""
    if "achieved" not in result:
        return []
    peaks = result["machine_peaks"]
    int8 = ", ".join(f"{t} thread{'s' * (t != '1')}: {v:.0f}" for t, v in peaks["int8"].items() if v)
    lines = [
        "",
        "Measured matmul peak (2048², same run): float32 "
        + ", ".join(f"{t} thread{'s' * (t != '1')}: {v:.0f}" for t, v in peaks["float32"].items())
        + " GFLOP/s"
        + (f"; int8 ({peaks['int8_library']}) {int8} GOP/s" if int8 else "; int8: no library here")
        + ".",
        "",
        "| mode | threads | monolithic ms | monolithic GFLOP/s | ÷ float32 peak | ÷ int8 peak "
        "| stage GFLOP/s (stage 1, 2, ...) | slowest ÷ median stage |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for table in result["achieved"]:
        int8_fraction = table["monolithic_fraction_of_int8_peak"]
        stages = table["stages"]
        slowest = min(stages, key=lambda row: row["fraction_of_median_stage"])
        int8_text = "—" if int8_fraction is None else f"{int8_fraction:.3f}"
        rates = ", ".join(f"{row['gflops_per_s']:.1f}" for row in stages)
        lines.append(
            f"| {table['quantization']} | {table['num_threads']} | {table['monolithic_ms']:.2f} "
            f"| {table['monolithic_gflops_per_s']:.1f} | {table['monolithic_fraction_of_float32_peak']:.2f} "
            f"| {int8_text} | {rates} "
            f"| {slowest['fraction_of_median_stage']:.2f} (stage {slowest['stage']})"
            f"{' **slow**' if slowest['slow'] else ''} |"
        )
    return lines
