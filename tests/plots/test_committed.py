"""What is committed says what the committed results say: every report and every
generated block of the documents is what ``dynroute report`` draws from them now."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynroute.plots import docs
from dynroute.plots.report import report_markdown

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"
SCALES = sorted(p.parent.name for p in RESULTS.glob("*/report.md"))


@pytest.mark.slow
@pytest.mark.parametrize("scale", SCALES)
def test_a_committed_report_is_what_the_committed_results_give(scale: str) -> None:
    committed = (RESULTS / scale / "report.md").read_text(encoding="utf-8")
    assert report_markdown(RESULTS, scale) == committed, (
        f"results/{scale}/report.md is stale: run `dynroute report --scale {scale}`"
    )


@pytest.mark.slow
def test_every_number_in_a_generated_block_is_the_results_number() -> None:
    documents = docs.default_documents(REPO)
    assert documents, "the documents hold generated blocks"
    assert docs.stale(documents, RESULTS) == [], (
        "generated blocks differ from the results: run `dynroute report --scale SCALE` "
        "from the repository root"
    )


def test_a_block_is_rewritten_in_place_and_only_for_its_scale(tmp_path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "before\n<!-- generated: demo/claims -->\nstale\n<!-- end generated -->\n"
        "<!-- generated: other/claims -->\nkept\n<!-- end generated -->\nafter\n"
    )
    (tmp_path / "results" / "demo").mkdir(parents=True)
    assert docs.rewrite([doc], tmp_path / "results", "demo") == [doc]
    text = doc.read_text()
    assert "stale" not in text and "| claim | verdict | evidence |" in text
    assert "kept" in text and text.startswith("before\n") and text.endswith("after\n")
    assert docs.rewrite([doc], tmp_path / "results", "demo") == []  # nothing left to change
    with pytest.raises(Exception, match="unknown generated block"):
        docs.render("demo/nonsense", docs.Evidence("demo", {}, {}, []))


def test_the_per_exit_block_puts_each_recipe_beside_plain_training_and_static_nets() -> None:
    def multi_exit(*accuracies: float) -> dict:
        exits = [{"accuracy": a} for a in accuracies]
        return {"multi-exit": {"policies": {"single_exit": exits}}}

    results = {
        "hybrid-multi-exit": multi_exit(0.9, 0.95),
        "hybrid-multi-exit-ramp": multi_exit(0.88, 0.96),
        "hybrid-multi-exit-boost": {"multi-exit": {}},  # no per-exit table: left out
        "hybrid-static": {"static-2": {"accuracy": 0.94}},
    }
    lines = docs.render("demo/recipe-exits", docs.Evidence("demo", results, {}, [])).splitlines()
    assert lines[0] == "| data | recipe | exit 1 | exit 2 |"
    assert "| hybrid | plain | 90.0 | 95.0 |" in lines
    assert "| hybrid | ramp | 88.0 | 96.0 |" in lines
    assert "| hybrid | static-k alone | – | 94.0 |" in lines
    assert not any("boost" in line for line in lines)
