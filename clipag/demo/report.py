"""The demo's results as a Markdown table (printed, and pasted into the docs)."""

from __future__ import annotations

from typing import Any

__all__ = ["format_table"]


def format_table(results: dict[str, Any]) -> str:
    epsilons = list(results["config"]["eval_epsilons"])
    pgd = " | ".join(f"zero-shot, PGD L2 ε={e:g}" for e in epsilons)
    rows = [f"| model | zero-shot, clean | {pgd} | generate → judge | shape only | forced choice | judged 'no shape' |",
            "|---|---" + "|---" * len(epsilons) + "|---|---|---|---|"]
    for name, m in results["models"].items():
        judged = m["generate_then_classify"]
        robust = " | ".join(f"{m['pgd_acc'][f'{e:g}']:.1%}" for e in epsilons)
        rows.append(f"| {name} | {m['clean_acc']:.1%} | {robust} | **{judged['accuracy']:.1%}** | "
                    f"{judged['shape_accuracy']:.1%} | {judged['forced_choice']:.1%} | {judged['rejected']:.0%} |")
    judge = results["judge"]
    rows.append("")
    rows.append(f"Judge (chance {results['chance']:.1%}): {judge['real_images']:.1%} on held-out renders; with the "
                f"prompts' labels it scores {judge['blank_gray']:.1%} on blank grey, {judge['blank_black']:.1%} on "
                f"blank black, {judge['start_images']:.1%} on the generator's start images "
                f"({judge['start_images_forced_choice']:.1%} forced to pick a shape) and {judge['noise']:.1%} on "
                "noise.")
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in results["timings_s"].items())
    rows.append(f"Timings: {timings}.")
    return "\n".join(rows)
