"""The policy table as rows of cells, drawn once for the terminal and for the report.

``policy_table_rows`` turns a table (``dynroute.policies.table``) into a header and rows of
plain strings; ``policy_table_text`` aligns them for ``dynroute policies``, and
``policy_table_markdown`` writes them for ``dynroute report``.
"""

from __future__ import annotations

from typing import Any

#: Short column titles of the decomposition's steps.
STEP_TITLES = {
    "raw rule": "raw rule",
    "+ recalibration": "+ recal.",
    "+ combination": "+ comb.",
    "+ learned decisions": "+ learned",
}


def _macs(value: float | None) -> str:
    return "–" if value is None else f"{value / 1e6:.2f} M"


def _cell(test: dict[str, float] | None) -> str:
    if test is None:
        return "–"
    return f"{100 * test['accuracy']:.2f} % at {_macs(test['mean_macs'])}"


def _versus(test: dict[str, Any] | None) -> str:
    """A comparison's gain and p-value, both sides' test MACs, and "not binding" where the
    budget changes neither side's choice (such cells count in no claim)."""
    if test is None:
        return "–"
    text = f"{100 * test['accuracy_difference']:+.2f} (p = {test['p_value']:.2g}"
    if "test_macs" in test:
        first, second = test["test_macs"]
        text += f"; {_macs(first)} vs {_macs(second)}"
    text += ")"
    return text + (", not binding" if test.get("binding") is False else "")


def describe_family(key: str) -> str:
    """``confidence/combined`` -> ``confidence on combined``; ``learned/raw`` (or an old
    table's ``learned``) -> ``routers on raw``."""
    rule, _, answers = key.partition("/")
    name = "routers" if rule == "learned" else rule
    return f"{name} on {answers or 'raw'}"


def _saving(entry: dict[str, Any]) -> str:
    """A learned decision's MAC saving over the best baseline (an old table: the share of
    the gap to the oracle it closed)."""
    if "mac_saving" in entry:
        saving = entry["mac_saving"]["saving"]
        return "–" if saving is None else f"{100 * saving:+.0f} % MACs saved"
    share = entry["gap_closed"]["share"]
    return "–" if share is None else f"{100 * share:.0f} % of the gap"


def policy_table_rows(table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per budget: the best baseline (chosen on validation) and its test point, each
    decomposition step's policy, test point and gain over the step before, and every
    learned decision against the best baseline with the MACs it saves."""
    learned = [f["key"] for f in table.get("families", []) if f["learned"]]
    header = ["budget", "best baseline", "test"]
    header += [STEP_TITLES.get(s, s) for s in STEP_TITLES][1:]
    header += [f"{describe_family(k)} vs best (MAC saving)" for k in learned]
    rows = []
    for row in table["budgets"]:
        cells = [_macs(row["budget"])]
        best = row.get("best_baseline")
        cells.append("–" if best is None else describe_family(best))
        cells.append(_cell(row["policies"].get(best, {}).get("test") if best else None))
        steps = row.get("steps", [])
        for step in steps[1:]:
            chosen = describe_family(step["policy"])
            cells.append(f"{chosen}: {_versus(step.get('versus_previous'))}")
        cells += ["–"] * (len(STEP_TITLES) - max(1, len(steps)))
        for key in learned:
            entry = row.get("learned", {}).get(key)
            if entry is None:
                cells.append("–")
                continue
            cells.append(f"{_versus(entry['versus_best_baseline'])} ({_saving(entry)})")
        rows.append(cells)
    return header, rows


def policy_table_text(table: dict[str, Any]) -> str:
    header, rows = policy_table_rows(table)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"  policy table ({table['protocol']}; {table['num_validation']} validation, "
        f"{table['num_test']} test examples; gains in points of test accuracy, exact McNemar):"
    ]
    for cells in [header, *rows]:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


def policy_table_markdown(table: dict[str, Any]) -> list[str]:
    header, rows = policy_table_rows(table)
    lines = ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines
