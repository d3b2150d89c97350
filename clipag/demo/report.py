"""The demo's results as a Markdown table (printed, and pasted into the README)."""

from __future__ import annotations

from typing import Any

__all__ = ["format_table"]


def format_table(results: dict[str, Any]) -> str:
    cfg = results["config"]
    rows = ["| model | zero-shot clean | zero-shot under PGD (L2 ε={}) | generate → judge accuracy |".format(
        cfg["eval_epsilon"]), "|---|---|---|---|"]
    for name, m in results["models"].items():
        judged = m["generate_then_classify"]
        rows.append(f"| {name} | {m['clean_acc']:.1%} | {m['pgd_acc']:.1%} | **{judged['accuracy']:.1%}** "
                    f"({judged['rejected']:.0%} judged 'no shape') |")
    judge = results["judge"]
    rows.append("")
    rows.append(f"Judge: {judge['real_images']:.1%} on held-out real renders; on the same prompts' labels it scores "
                f"{judge['blank_gray']:.1%} for blank grey images and {judge['noise']:.1%} for noise "
                f"(chance {results['chance']:.1%}).")
    return "\n".join(rows)
