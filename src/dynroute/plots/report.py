"""``dynroute report``: one page with every figure and the paper's claims, computed.

Each claim of the paper (docs/method.md §7) is checked from result files alone and gets a verdict
(supported / not supported / not run) and the numbers behind it. Nothing here is
written by hand, so the page is only as good as the results it reads.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynroute.experiments.results import CurvePoint, curve, load_results

Results = dict[str, dict[str, dict]]
SUPPORTED, NOT_SUPPORTED, NOT_RUN = "supported", "not supported", "not run"
#: The acceptance band of the quick sweep: the actor must beat static at every budget here.
BAND = (5e6, 15e6)


@dataclass
class Claim:
    claim: str
    verdict: str
    evidence: str


def _mmacs(value: float) -> str:
    return f"{value / 1e6:.2f} M"


def static_error_at(static: list[CurvePoint], macs: float) -> float | None:
    """The static curve's error at ``macs`` by linear interpolation; None outside it."""
    xs = [p.mean_macs for p in static]
    if not xs or macs < xs[0] or macs > xs[-1]:
        return None
    return float(np.interp(macs, xs, [p.error for p in static]))


def dynamic_macs_for_accuracy(points: list[CurvePoint], accuracy: float) -> float | None:
    """Fewest MACs at which the dynamic curve reaches ``accuracy`` (interpolating between its
    points in MAC order); None if it never does."""
    best = None
    for a, b in zip(points, points[1:], strict=False):
        if a.accuracy >= accuracy:
            best = a.mean_macs if best is None else min(best, a.mean_macs)
        elif b.accuracy >= accuracy:
            t = (accuracy - a.accuracy) / (b.accuracy - a.accuracy)
            macs = a.mean_macs + t * (b.mean_macs - a.mean_macs)
            best = macs if best is None else min(best, macs)
    if points and points[-1].accuracy >= accuracy:
        best = points[-1].mean_macs if best is None else min(best, points[-1].mean_macs)
    return best


def mean_gain(static: list[CurvePoint], dynamic: list[CurvePoint]) -> tuple[float, int] | None:
    """Mean of (static error − dynamic error) over dynamic points inside the static range."""
    gains = []
    for p in dynamic:
        reference = static_error_at(static, p.mean_macs)
        if reference is not None:
            gains.append(reference - p.error)
    return (float(np.mean(gains)), len(gains)) if gains else None


def peak(points: list[CurvePoint]) -> CurvePoint:
    return max(points, key=lambda p: p.accuracy)


class ClaimChecker:
    """Computes every claim from the curves of one scale's results."""

    def __init__(self, results: Results) -> None:
        self.curves = {name: curve(networks) for name, networks in results.items()}

    def has(self, *names: str) -> bool:
        return all(self.curves.get(n) for n in names)

    def missing(self, claim: str, *names: str) -> Claim:
        absent = [n for n in names if not self.curves.get(n)]
        return Claim(claim, NOT_RUN, f"missing: {', '.join(absent)}")

    # ------------------------------------------------------------------ claims
    def dynamic_beats_static(self) -> Claim:
        claim = "dynamic beats static at equal MACs on hybrid (actor, 5–15 M MACs)"
        if not self.has("hybrid-static", "hybrid-actor"):
            return self.missing(claim, "hybrid-static", "hybrid-actor")
        static, actor = self.curves["hybrid-static"], self.curves["hybrid-actor"]
        inside = [p for p in actor if BAND[0] <= p.mean_macs <= BAND[1]]
        checks = [(p, static_error_at(static, p.mean_macs)) for p in inside]
        checks = [(p, s) for p, s in checks if s is not None]
        # Also compare at the band's static points, interpolating the actor curve there.
        for s in static:
            if BAND[0] <= s.mean_macs <= BAND[1]:
                a = static_error_at(actor, s.mean_macs)
                if a is not None:
                    checks.append((CurvePoint("", "", None, s.mean_macs, 1 - a), s.error))
        if not checks:
            return Claim(claim, NOT_RUN, "no actor point between 5 M and 15 M MACs")
        wins = sum(p.error < s for p, s in checks)
        worst = max(p.error - s for p, s in checks)
        verdict = SUPPORTED if wins == len(checks) else NOT_SUPPORTED
        evidence = (
            f"actor error below interpolated static error at {wins}/{len(checks)} budgets in "
            f"5–15 M; smallest margin {-worst * 100:+.2f} points"
        )
        noise = [p.standard_error for p in inside if p.num_examples]
        if noise:  # how large a margin the test set can resolve
            evidence += (
                f" (binomial standard error of one accuracy on {inside[0].num_examples} test "
                f"images: ±{100 * float(np.mean(noise)):.2f} points)"
            )
        return Claim(claim, verdict, evidence)

    def strategy_order(self) -> Claim:
        names = ("hybrid-static", "hybrid-actor", "hybrid-critic", "hybrid-critic-optimistic")
        claim = "actor > pragmatic critic > optimistic critic (mean gain over static)"
        if not self.has(*names):
            return self.missing(claim, *names)
        gains = {n: mean_gain(self.curves[names[0]], self.curves[n]) for n in names[1:]}
        if any(g is None for g in gains.values()):
            return Claim(claim, NOT_RUN, "curves do not overlap the static MAC range")
        a, c, o = (gains[n][0] for n in names[1:])
        verdict = SUPPORTED if a > c > o else NOT_SUPPORTED
        return Claim(
            claim,
            verdict,
            f"mean error reduction vs static: actor {a * 100:+.2f}, critic {c * 100:+.2f}, "
            f"optimistic critic {o * 100:+.2f} points",
        )

    def _peak_comparison(self, claim: str, better: str, worse: str) -> Claim:
        if not self.has(better, worse):
            return self.missing(claim, better, worse)
        b, w = peak(self.curves[better]), peak(self.curves[worse])
        verdict = SUPPORTED if b.accuracy > w.accuracy else NOT_SUPPORTED
        return Claim(
            claim,
            verdict,
            f"peak accuracy {better} {b.accuracy:.4f} ({_mmacs(b.mean_macs)}) vs {worse} "
            f"{w.accuracy:.4f} ({_mmacs(w.mean_macs)})",
        )

    def talr(self) -> Claim:
        return self._peak_comparison(
            "TALR helps at high accuracy", "hybrid-actor", "hybrid-actor-notalr"
        )

    def k_dec(self) -> Claim:
        claim = "k_dec > 0 is needed for actors"
        if not self.has("hybrid-static", "hybrid-actor", "hybrid-actor-nokdec"):
            return self.missing(claim, "hybrid-static", "hybrid-actor", "hybrid-actor-nokdec")
        static = self.curves["hybrid-static"]
        with_dec = mean_gain(static, self.curves["hybrid-actor"])
        without = mean_gain(static, self.curves["hybrid-actor-nokdec"])
        if with_dec is None or without is None:
            return Claim(claim, NOT_RUN, "curves do not overlap the static MAC range")
        verdict = SUPPORTED if with_dec[0] > without[0] else NOT_SUPPORTED
        return Claim(
            claim,
            verdict,
            f"mean error reduction vs static: k_dec 0.01 {with_dec[0] * 100:+.2f}, k_dec 0 "
            f"{without[0] * 100:+.2f} points",
        )

    def regularised_policy(self) -> Claim:
        return self._peak_comparison(
            "regularising the policy hurts peak accuracy", "hybrid-actor", "hybrid-actor-regpolicy"
        )

    def dynamic_k_cpt(self) -> Claim:
        claim = "one dynamic-k_cpt net ≈ 8 specialised nets"
        if not self.has("hybrid-static", "hybrid-actor", "hybrid-actor-dynkcpt"):
            return self.missing(claim, "hybrid-static", "hybrid-actor", "hybrid-actor-dynkcpt")
        static = self.curves["hybrid-static"]
        eight = mean_gain(static, self.curves["hybrid-actor"])
        one = mean_gain(static, self.curves["hybrid-actor-dynkcpt"])
        if eight is None or one is None:
            return Claim(claim, NOT_RUN, "curves do not overlap the static MAC range")
        # "≈": the single net keeps at least half of the specialised nets' gain over static.
        verdict = SUPPORTED if one[0] >= 0.5 * eight[0] and one[0] > 0 else NOT_SUPPORTED
        return Claim(
            claim,
            verdict,
            f"mean error reduction vs static: 8 actor nets {eight[0] * 100:+.2f}, one "
            f"dynamic-k_cpt net {one[0] * 100:+.2f} points (needs ≥ half and > 0)",
        )

    def easy_examples(self) -> Claim:
        names = ("cifar2-static", "cifar2-actor", "cifar10-static", "cifar10-actor")
        claim = "dynamic routing helps most when easy examples are common (CIFAR-2 > CIFAR-10)"
        if not self.has(*names):
            return self.missing(claim, *names)
        ratios = {}
        for dataset in ("cifar2", "cifar10"):
            ratios[dataset] = self.mac_ratio(f"{dataset}-static", f"{dataset}-actor")
        if any(r is None for r in ratios.values()):
            return Claim(claim, NOT_SUPPORTED, "an actor curve never reaches its static peak")
        r2, r10 = ratios["cifar2"][2], ratios["cifar10"][2]
        verdict = SUPPORTED if r2 > r10 else NOT_SUPPORTED
        return Claim(
            claim,
            verdict,
            f"MAC saving at the static net's best accuracy: CIFAR-2 {r2:.2f}×, CIFAR-10 {r10:.2f}×",
        )

    def mac_ratio(self, static_name: str, dynamic_name: str) -> tuple[float, float, float] | None:
        """(static MACs, dynamic MACs, ratio) at the static curve's best accuracy."""
        best = peak(self.curves[static_name])
        macs = dynamic_macs_for_accuracy(self.curves[dynamic_name], best.accuracy)
        if macs is None:
            return None
        return best.mean_macs, macs, best.mean_macs / macs

    def fewer_macs(self) -> Claim:
        claim = "2–3× fewer MACs than static at equal accuracy (hybrid actor)"
        if not self.has("hybrid-static", "hybrid-actor"):
            return self.missing(claim, "hybrid-static", "hybrid-actor")
        best = peak(self.curves["hybrid-static"])
        found = self.mac_ratio("hybrid-static", "hybrid-actor")
        if found is None:
            top = peak(self.curves["hybrid-actor"])
            return Claim(
                claim,
                NOT_SUPPORTED,
                f"best static accuracy {best.accuracy:.4f} at {_mmacs(best.mean_macs)}; the best "
                f"actor net reaches only {top.accuracy:.4f}",
            )
        static_macs, dynamic_macs, ratio = found
        verdict = SUPPORTED if ratio >= 2 else NOT_SUPPORTED
        return Claim(
            claim,
            verdict,
            f"MACs the best dynamic net needs to match the best static net's accuracy "
            f"({best.accuracy:.4f}): {_mmacs(dynamic_macs)} vs {_mmacs(static_macs)} "
            f"(ratio {ratio:.2f})",
        )

    def all(self) -> list[Claim]:
        checks: list[Callable[[], Claim]] = [
            self.dynamic_beats_static,
            self.strategy_order,
            self.talr,
            self.k_dec,
            self.regularised_policy,
            self.dynamic_k_cpt,
            self.easy_examples,
            self.fewer_macs,
        ]
        return [check() for check in checks]


def check_claims(results: Results) -> list[Claim]:
    return ClaimChecker(results).all()


def _markdown(scale: str, results: Results, claims: list[Claim], figures: list[Path]) -> str:
    networks = sum(len(v) for v in results.values())
    lines = [
        f"# dynroute reproduction report: scale `{scale}`",
        "",
        f"{networks} networks in {len(results)} experiments. Generated by "
        f"`dynroute report --scale {scale}` from the result files; do not edit by hand.",
        "",
        "## Claims of the paper (docs/method.md §7)",
        "",
        *(
            ["Smoke results are near chance: these verdicts test the pipeline, not the paper.", ""]
            if scale == "smoke"
            else []
        ),
        "| claim | verdict | evidence |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {c.claim} | **{c.verdict}** | {c.evidence} |" for c in claims]
    lines += ["", "## Experiments", "", "| experiment | networks | best accuracy | at MACs |"]
    lines += ["| --- | --- | --- | --- |"]
    checker = ClaimChecker(results)
    for name, points in checker.curves.items():
        if points:
            best = peak(points)
            lines.append(
                f"| {name} | {len(results[name])} | {best.accuracy:.4f} | "
                f"{_mmacs(best.mean_macs)} |"
            )
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}](figures/{p.name})" + "\n" for p in figures if p.suffix == ".png"]
    return "\n".join(lines) + "\n"


def _html(markdown: str) -> str:
    """A plain HTML rendering of the page (tables, headings, images), no dependencies."""
    body, table = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()).replace("**", "") for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("- "):
                continue
            tag = "th" if not table else "td"
            if not table:
                body.append("<table border='1' cellpadding='4'>")
                table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            body.append("</table>")
            table = False
        if line.startswith("!["):
            src = line[line.index("(") + 1 : line.index(")")]
            body.append(f"<p><img src='{html.escape(src)}' style='max-width:100%'></p>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    if table:
        body.append("</table>")
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>dynroute report</title>"
        "</head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(results_dir: str | os.PathLike[str], scale: str) -> tuple[Path, Path]:
    """Draw every figure, check every claim, write report.md and report.html."""
    from dynroute.plots import render

    results = load_results(results_dir, scale)
    figures = render(results_dir, scale)
    markdown = _markdown(scale, results, check_claims(results), figures)
    out = Path(results_dir) / scale
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(_html(markdown))
    return out / "report.md", out / "report.html"
