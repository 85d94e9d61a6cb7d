"""The paper's claims, checked from result files alone, with the statistics behind them.

Each claim of the paper (docs/method.md §7) gets a verdict (supported / not supported /
not run) and the numbers behind it. Curves are compared through their frontier
(``dynroute.policies.curves``) and paired per example with McNemar
(``dynroute.policies.statistics``); ``dynroute.plots.report`` only renders what this module finds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dynroute.experiments import policy_claims
from dynroute.experiments.results import Results, curve, policy_analyses, study_label
from dynroute.policies.curves import CurvePoint, error_at, macs_for_accuracy
from dynroute.policies.statistics import mcnemar_counts, mcnemar_p_value, unpack_bits

SUPPORTED, NOT_SUPPORTED, NOT_RUN = "supported", "not supported", "not run"
#: The paper's comparison band (the actor must beat static at every budget in it), in MACs,
#: for the hybrid chain whose deepest static net costs PAPER_DEEPEST_STATIC_MACS. Other image
#: sizes, widths or backbones get the same fractions of their own deepest static net.
PAPER_BAND = (5e6, 15e6)
PAPER_DEEPEST_STATIC_MACS = 20_551_424.0


def band_for(static: list[CurvePoint]) -> tuple[float, float]:
    """The comparison band scaled to a static curve's deepest net (the paper's without one)."""
    if not static:
        return PAPER_BAND
    scale = max(p.mean_macs for p in static) / PAPER_DEEPEST_STATIC_MACS
    return PAPER_BAND[0] * scale, PAPER_BAND[1] * scale


def band_label(band: tuple[float, float]) -> str:
    return f"{band[0] / 1e6:.3g}–{band[1] / 1e6:.3g} M"


@dataclass
class Claim:
    claim: str
    verdict: str
    evidence: str


def mmacs(value: float) -> str:
    return f"{value / 1e6:.2f} M"


def mean_gain(static: list[CurvePoint], dynamic: list[CurvePoint]) -> tuple[float, int] | None:
    """Mean of (static error − dynamic error) over dynamic points inside the static range."""
    gains = []
    for p in dynamic:
        reference = error_at(static, p.mean_macs)
        if reference is not None:
            gains.append(reference - p.error)
    return (float(np.mean(gains)), len(gains)) if gains else None


def mean_gain_standard_error(static: list[CurvePoint], dynamic: list[CurvePoint]) -> float:
    """Standard error of :func:`mean_gain`, treating every accuracy as an independent binomial
    on the dynamic point's test-set size (conservative: nets share one test set); nan when a
    point's test-set size is unknown. A mean gain smaller than this is noise, not a win."""
    variances = []
    for p in dynamic:
        reference = error_at(static, p.mean_macs)
        if reference is not None:
            if p.num_examples <= 0:
                return math.nan
            variances.append((p.error * p.accuracy + reference * (1 - reference)) / p.num_examples)
    return math.sqrt(sum(variances)) / len(variances) if variances else math.nan


def above_noise(difference: float, standard_error: float) -> tuple[bool, str]:
    """Whether ``difference`` exceeds ``standard_error`` (> 0 when that is unknown), and the
    comparison as text for the evidence column."""
    if math.isnan(standard_error):
        return difference > 0, f"{100 * difference:+.2f} points, needs > 0"
    return difference > standard_error, (
        f"{100 * difference:+.2f} points, needs more than its standard error "
        f"±{100 * standard_error:.2f}"
    )


def beats_static(static: list[CurvePoint], dynamic: list[CurvePoint]) -> tuple[bool, str]:
    """Whether the dynamic curve's mean gain over static exceeds its standard error, and the
    rule as evidence text (the mean gain itself is reported by the caller)."""
    gain = mean_gain(static, dynamic)
    if gain is None:
        return False, ""
    se = mean_gain_standard_error(static, dynamic)
    if math.isnan(se):
        return gain[0] > 0, "needs > 0"
    return gain[0] > se, f"needs more than its standard error, ±{100 * se:.2f} points"


def peak(points: list[CurvePoint]) -> CurvePoint:
    return max(points, key=lambda p: p.accuracy)


def on_shared_k_cpt(*curves: list[CurvePoint]) -> tuple[list[list[CurvePoint]], str]:
    """The curves cut to the k_cpt values they all have, and a note saying so.

    A scale may thin a variant to every other k_cpt (``Scale.k_cpt_every``) while the full
    curve keeps all 8. Mean gains and peaks then differ by which budgets they cover, not
    only by the variant (gains are largest at tight budgets; a peak over 8 nets has more
    chances than one over 4), so variants are compared on the budgets both trained. Curves
    without a k_cpt on every point, or with nothing in common, are returned unchanged."""
    if any(p.k_cpt is None for points in curves for p in points):
        return list(curves), ""
    sets = [{p.k_cpt for p in points} for points in curves]
    shared = set.intersection(*sets)
    if not shared or all(values == shared for values in sets):
        return list(curves), ""
    cut = [[p for p in points if p.k_cpt in shared] for points in curves]
    return cut, f"; on the {len(shared)} k_cpt values all of them trained"


class ClaimChecker:
    """Computes every claim from the curves of one scale's results."""

    def __init__(
        self,
        results: Results,
        variants: dict[str, Results] | None = None,
        studies: dict[str, dict] | None = None,
    ) -> None:
        self.results = results
        self.variants = variants or {}
        self.studies = studies or {}
        self.curves = {name: curve(networks) for name, networks in results.items()}
        self.policies = policy_analyses(results)
        self.band = band_for(self.curves.get("hybrid-static", []))

    def _expected(self, name: str) -> list[str] | None:
        """The networks ``name`` has at its results' scale (None: unknown scale or name)."""
        from dynroute.experiments.registry import EXPERIMENTS, SCALES, expand

        scales = {r.get("scale") for r in self.results.get(name, {}).values()}
        if len(scales) != 1 or name not in EXPERIMENTS or next(iter(scales)) not in SCALES:
            return None
        return [n.name for n in expand(name, next(iter(scales)))]

    def complete(self, name: str) -> bool:
        """Whether every network of the experiment at its scale has a result: a claim is
        never judged on part of a curve (a sweep still running)."""
        if not self.curves.get(name):
            return False
        expected = self._expected(name)
        return expected is None or set(expected) <= set(self.results[name])

    def datasets(self, name: str) -> set[str]:
        """The datasets an experiment's result files were trained on."""
        return {net["config"]["dataset"] for net in self.results.get(name, {}).values()}

    def has(self, *names: str) -> bool:
        return all(self.complete(n) for n in names)

    def missing(self, claim: str, *names: str) -> Claim:
        absent = [n for n in names if not self.curves.get(n)]
        partial = [
            f"{n} ({len(self.results[n])}/{len(self._expected(n) or [])} networks)"
            for n in names
            if self.curves.get(n) and not self.complete(n)
        ]
        parts = ([f"missing: {', '.join(absent)}"] if absent else []) + (
            [f"incomplete: {', '.join(partial)}"] if partial else []
        )
        return Claim(claim, NOT_RUN, "; ".join(parts))

    def missing_policies(
        self, claim: str, *names: str, band: tuple[float, float] | None = None
    ) -> Claim:
        """A routing-policy claim whose experiments lack policy analyses (result files from
        before sweeps wrote them, or no network in the comparison band)."""
        absent = [n for n in names if not self.policies.get(n)]
        if not absent:
            label = band_label(band or self.band)
            return Claim(claim, NOT_RUN, f"no learned operating point in {label}")
        return Claim(claim, NOT_RUN, f"no policy analyses: {', '.join(absent)}")

    # ------------------------------------------------------------------ claims
    def dynamic_beats_static(self) -> Claim:
        low, high = self.band
        band = band_label(self.band)
        claim = f"dynamic beats static at equal MACs on hybrid (actor, {band} MACs)"
        if not self.has("hybrid-static", "hybrid-actor"):
            return self.missing(claim, "hybrid-static", "hybrid-actor")
        static, actor = self.curves["hybrid-static"], self.curves["hybrid-actor"]
        inside = [p for p in actor if low <= p.mean_macs <= high]
        checks = [(p, error_at(static, p.mean_macs)) for p in inside]
        checks = [(p, s) for p, s in checks if s is not None]
        # Also compare at the band's static points, interpolating the actor curve there.
        for s in static:
            if low <= s.mean_macs <= high:
                a = error_at(actor, s.mean_macs)
                if a is not None:
                    checks.append((CurvePoint("", "", None, s.mean_macs, 1 - a), s.error))
        if not checks:
            return Claim(claim, NOT_RUN, f"no actor point in {band}")
        wins = sum(p.error < s for p, s in checks)
        margins = [s - p.error for p, s in checks]
        verdict = SUPPORTED if wins == len(checks) else NOT_SUPPORTED
        evidence = (
            f"actor error below the static frontier at {wins}/{len(checks)} budgets in "
            f"{band}; margin {100 * float(np.mean(margins)):+.2f} points on average, smallest "
            f"{100 * min(margins):+.2f}"
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
        static = self.curves[names[0]]
        routed, shared = on_shared_k_cpt(*(self.curves[n] for n in names[1:]))
        gains = [mean_gain(static, points) for points in routed]
        if any(g is None for g in gains):
            return Claim(claim, NOT_RUN, "curves do not overlap the static MAC range")
        a, c, o = (g[0] for g in gains)
        # Each step of the order must be larger than the noise of the two gains it compares.
        se = [mean_gain_standard_error(static, points) for points in routed]
        steps = [math.hypot(se[0], se[1]), math.hypot(se[1], se[2])]
        if any(math.isnan(x) for x in steps):
            verdict, rule = (SUPPORTED if a > c > o else NOT_SUPPORTED), "needs a > c > o"
        else:
            verdict = SUPPORTED if a - c > steps[0] and c - o > steps[1] else NOT_SUPPORTED
            rule = (
                f"each step must exceed its standard error: actor − critic {100 * (a - c):+.2f}"
                f" vs ±{100 * steps[0]:.2f}, critic − optimistic {100 * (c - o):+.2f} vs "
                f"±{100 * steps[1]:.2f}"
            )
        return Claim(
            claim,
            verdict,
            f"mean error reduction vs static: actor {a * 100:+.2f}, critic {c * 100:+.2f}, "
            f"optimistic critic {o * 100:+.2f} points ({rule}{shared})",
        )

    def _peak_comparison(self, claim: str, better: str, worse: str) -> Claim:
        if not self.has(better, worse):
            return self.missing(claim, better, worse)
        (better_points, worse_points), shared = on_shared_k_cpt(
            self.curves[better], self.curves[worse]
        )
        b, w = peak(better_points), peak(worse_points)
        wins, rule = above_noise(
            b.accuracy - w.accuracy, math.hypot(b.standard_error, w.standard_error)
        )
        return Claim(
            claim,
            SUPPORTED if wins else NOT_SUPPORTED,
            f"peak accuracy {better} {b.accuracy:.4f} ({mmacs(b.mean_macs)}) vs {worse} "
            f"{w.accuracy:.4f} ({mmacs(w.mean_macs)}): {rule}{shared}",
        )

    def talr(self) -> Claim:
        """§5.3: TALR improves "both actor and critic networks" at high accuracy."""
        claim = "TALR helps at high accuracy (actor and critic, §5.3)"
        pairs = (("actor", "hybrid-actor-notalr"), ("critic", "hybrid-critic-notalr"))
        names = [n for strategy, without in pairs for n in (f"hybrid-{strategy}", without)]
        if not self.has(*names):
            return self.missing(claim, *names)
        found = [
            (strategy, self._peak_comparison(claim, f"hybrid-{strategy}", without))
            for strategy, without in pairs
        ]
        verdict = SUPPORTED if all(c.verdict == SUPPORTED for _, c in found) else NOT_SUPPORTED
        return Claim(claim, verdict, ". ".join(f"{s}: {c.evidence}" for s, c in found))

    def k_dec(self) -> Claim:
        claim = "k_dec > 0 is needed for actors"
        if not self.has("hybrid-static", "hybrid-actor", "hybrid-actor-nokdec"):
            return self.missing(claim, "hybrid-static", "hybrid-actor", "hybrid-actor-nokdec")
        static = self.curves["hybrid-static"]
        (actor, nokdec), shared = on_shared_k_cpt(
            self.curves["hybrid-actor"], self.curves["hybrid-actor-nokdec"]
        )
        with_dec, without = mean_gain(static, actor), mean_gain(static, nokdec)
        if with_dec is None or without is None:
            return Claim(claim, NOT_RUN, "curves do not overlap the static MAC range")
        noise = math.hypot(
            mean_gain_standard_error(static, actor), mean_gain_standard_error(static, nokdec)
        )
        wins, rule = above_noise(with_dec[0] - without[0], noise)
        return Claim(
            claim,
            SUPPORTED if wins else NOT_SUPPORTED,
            f"mean error reduction vs static: k_dec 0.01 {with_dec[0] * 100:+.2f}, k_dec 0 "
            f"{without[0] * 100:+.2f} points (difference {rule}{shared})",
        )

    def regularised_policy(self) -> Claim:
        return self._peak_comparison(
            "regularising the policy hurts peak accuracy", "hybrid-actor", "hybrid-actor-regpolicy"
        )

    def dynamic_k_cpt(self) -> Claim:
        claim = "one dynamic-k_cpt net ≈ 8 specialised nets over a central region of the curve"
        if not self.has("hybrid-static", "hybrid-actor", "hybrid-actor-dynkcpt"):
            return self.missing(claim, "hybrid-static", "hybrid-actor", "hybrid-actor-dynkcpt")
        static = self.curves["hybrid-static"]
        eight = mean_gain(static, self.curves["hybrid-actor"])
        one = mean_gain(static, self.curves["hybrid-actor-dynkcpt"])
        if eight is None or one is None:
            return Claim(claim, NOT_RUN, "curves do not overlap the static MAC range")
        # "Central region": the middle half of the 8 nets' MAC range (25th-75th percentile);
        # the one net's points must span at least half of it.
        low, high = np.percentile([p.mean_macs for p in self.curves["hybrid-actor"]], [25, 75])
        macs = [p.mean_macs for p in self.curves["hybrid-actor-dynkcpt"]]
        overlap = max(0.0, min(high, max(macs)) - max(low, min(macs)))
        coverage = overlap / (high - low) if high > low else 0.0
        verdict = (
            SUPPORTED
            if one[0] >= 0.5 * eight[0] and one[0] > 0 and coverage >= 0.5
            else NOT_SUPPORTED
        )
        return Claim(
            claim,
            verdict,
            f"mean error reduction vs static: 8 actor nets {eight[0] * 100:+.2f}, one "
            f"dynamic-k_cpt net {one[0] * 100:+.2f} points (needs ≥ half and > 0); its points "
            f"span {mmacs(min(macs))}–{mmacs(max(macs))}, {100 * coverage:.0f} % of the 8 "
            f"nets' central region {mmacs(low)}–{mmacs(high)} (needs ≥ 50 %)",
        )

    def easy_examples(self) -> Claim:
        names = ("cifar2-static", "cifar2-actor", "cifar10-static", "cifar10-actor")
        claim = "dynamic routing helps most when easy examples are common (CIFAR-2 > CIFAR-10)"
        if not self.has(*names):
            return self.missing(claim, *names)
        if self.datasets("cifar2-actor") == self.datasets("cifar10-actor"):  # sweep --dataset
            trained = ", ".join(sorted(self.datasets("cifar2-actor")))
            return Claim(
                claim, NOT_RUN, f"both trained on {trained!r}: the claim compares two datasets"
            )
        found = {d: self._saving(d) for d in ("cifar2", "cifar10")}
        (r2, detail2), (r10, detail10) = found["cifar2"], found["cifar10"]
        evidence = (
            f"MAC saving at the highest accuracy both curves reach: CIFAR-2 {detail2}, "
            f"CIFAR-10 {detail10}"
        )
        # Figure 9's middle dataset: reported so a reader sees the whole trend, but the
        # paper's words (and so the rule) compare CIFAR-2 with CIFAR-10.
        if self.has("cifar5-static", "cifar5-actor"):
            evidence += f"; CIFAR-5 (not in the rule) {self._saving('cifar5')[1]}"
        return Claim(claim, SUPPORTED if r2 > r10 else NOT_SUPPORTED, evidence)

    def _saving(self, dataset: str) -> tuple[float, str]:
        """Static MACs / actor MACs at the highest accuracy both of ``dataset``'s curves reach,
        and how to print it. That level is the static peak, or the actor's where that is lower
        (the paper's CIFAR-2 actor beat its static peak; a short run's may stop just below it
        and still save most of the MACs)."""
        static, actor = self.curves[f"{dataset}-static"], self.curves[f"{dataset}-actor"]
        top_static, top_actor = peak(static).accuracy, peak(actor).accuracy
        level = min(top_static, top_actor)  # both curves reach it: never None below
        ratio = macs_for_accuracy(static, level) / macs_for_accuracy(actor, level)
        return ratio, (
            f"{ratio:.2f}× at {100 * level:.2f} % "
            f"(peaks {100 * top_actor:.2f} % (actor) vs {100 * top_static:.2f} %)"
        )

    def mac_ratio(self, static_name: str, dynamic_name: str) -> tuple[float, float, float] | None:
        """(static MACs, dynamic MACs, ratio) at the static curve's best accuracy."""
        best = peak(self.curves[static_name])
        macs = macs_for_accuracy(self.curves[dynamic_name], best.accuracy)
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
            evidence = (
                f"best static accuracy {best.accuracy:.4f} at {mmacs(best.mean_macs)}; the best "
                f"actor net reaches only {top.accuracy:.4f}"
            )
            # What a reader asks next: the saving at the accuracy the actor does reach.
            static_macs = macs_for_accuracy(self.curves["hybrid-static"], top.accuracy)
            if static_macs is not None:
                evidence += (
                    f", where static nets need {mmacs(static_macs)} against its "
                    f"{mmacs(top.mean_macs)} (ratio {static_macs / top.mean_macs:.2f})"
                )
            return Claim(claim, NOT_SUPPORTED, evidence)
        static_macs, dynamic_macs, ratio = found
        verdict = SUPPORTED if ratio >= 2 else NOT_SUPPORTED
        return Claim(
            claim,
            verdict,
            f"MACs the best dynamic net needs to match the best static net's accuracy "
            f"({best.accuracy:.4f}): {mmacs(dynamic_macs)} vs {mmacs(static_macs)} "
            f"(ratio {ratio:.2f})",
        )

    # ------------------------------------------------------------ further claims
    def critic_clserr(self) -> Claim:
        claim = "the critic with classification-error targets still beats static (§5.1)"
        names = ("hybrid-static", "hybrid-critic", "hybrid-critic-clserr")
        if not self.has(*names):
            return self.missing(claim, *names)
        static = self.curves["hybrid-static"]
        clserr = mean_gain(static, self.curves["hybrid-critic-clserr"])
        critic = mean_gain(static, self.curves["hybrid-critic"])
        if clserr is None or critic is None:
            return Claim(claim, NOT_RUN, "curves do not overlap the static MAC range")
        wins, rule = beats_static(static, self.curves["hybrid-critic-clserr"])
        return Claim(
            claim,
            SUPPORTED if wins else NOT_SUPPORTED,
            f"mean error reduction vs static over {clserr[1]} nets: classification-error critic "
            f"{clserr[0] * 100:+.2f} ({rule}), cross-entropy critic {critic[0] * 100:+.2f} "
            f"points{self._noise('hybrid-critic-clserr')}",
        )

    def _noise(self, experiment: str) -> str:
        points = [p for p in self.curves.get(experiment, []) if p.num_examples]
        if not points:
            return ""
        se = float(np.mean([p.standard_error for p in points]))
        return f"; one accuracy's standard error ±{100 * se:.2f} points"

    def _by_k(self, experiment: str) -> dict[float, CurvePoint]:
        return {p.k_cpt: p for p in self.curves.get(experiment, []) if p.k_cpt is not None}

    def _gaps(self, experiment: str) -> list[tuple[float, float, float | None]]:
        """(test mean MACs, train accuracy − test accuracy, k_cpt) of each network point,
        from result files that carry ``train_points`` (sweeps write them), in MAC order."""
        found = []
        for result in self.results.get(experiment, {}).values():
            train = {p["k_cpt"]: p["accuracy"] for p in result.get("train_points", [])}
            for point in result["points"]:
                if point["k_cpt"] in train:
                    gap = train[point["k_cpt"]] - point["accuracy"]
                    found.append((point["mean_macs"], gap, point["k_cpt"]))
        return sorted(found, key=lambda row: row[0])

    def tree_vs_chain(self) -> Claim:
        claim = (
            "under tight budgets the branching tree beats the chain; unconstrained it "
            "overfits (§5.4)"
        )
        if not self.has("hybrid-actor", "hybrid-actor-tree"):
            return self.missing(claim, "hybrid-actor", "hybrid-actor-tree")
        chain, tree = self.curves["hybrid-actor"], self._by_k("hybrid-actor-tree")
        tight = [tree[k] for k in sorted(k for k in tree if k > 0)[-3:]]  # 3 largest k_cpt
        margins = [(error_at(chain, p.mean_macs), p) for p in tight]
        margins = [(c - p.error, p) for c, p in margins if c is not None]
        free = {name: self._by_k(name).get(0.0) for name in ("hybrid-actor", "hybrid-actor-tree")}
        if not margins or any(v is None for v in free.values()):
            return Claim(
                claim, NOT_RUN, "no tight-budget tree point on the chain's MAC range, or no "
                "k_cpt = 0 net"
            )  # fmt: skip
        beats = all(m > 0 for m, _ in margins)
        gap = {
            name: next((g for _, g, k in self._gaps(name) if k == 0.0), None)
            for name in ("hybrid-actor", "hybrid-actor-tree")
        }
        if None not in gap.values():
            overfits = gap["hybrid-actor-tree"] > gap["hybrid-actor"]
            free_text = (
                f"at k_cpt 0 the train−test gap is {100 * gap['hybrid-actor-tree']:.2f} points "
                f"(tree) vs {100 * gap['hybrid-actor']:.2f} (chain)"
            )
        else:  # result files without train points: test accuracy alone
            overfits = free["hybrid-actor-tree"].accuracy < free["hybrid-actor"].accuracy
            free_text = (
                f"at k_cpt 0 test accuracy {free['hybrid-actor-tree'].accuracy:.4f} (tree) vs "
                f"{free['hybrid-actor'].accuracy:.4f} (chain); no train evaluations"
            )
        verdict = SUPPORTED if beats and overfits else NOT_SUPPORTED
        shown = ", ".join(f"{100 * m:+.2f} at {mmacs(p.mean_macs)}" for m, p in margins)
        return Claim(
            claim,
            verdict,
            f"tree's error below the chain curve at the 3 largest k_cpt: {shown} points; "
            f"{free_text}{self._noise('hybrid-actor-tree')}",
        )

    def exits_specialise(self) -> Claim:
        claim = (
            "early exits have high accuracy and exits specialise by kind of image: digits "
            "leave at exit 1 far more often than CIFAR images (§5.4, figures 6–7)"
        )
        networks = self.results.get("hybrid-actor", {})
        net = networks.get("k_cpt-4e-09")
        if net is None:
            return self.missing(claim, "hybrid-actor/k_cpt-4e-09")
        from dynroute.data.datasets import DATASETS

        spec = DATASETS.get(net["config"]["dataset"])
        kinds = spec.class_sources if spec else ()
        if len(set(kinds)) < 2 or "mnist" not in kinds:
            return Claim(
                claim, NOT_RUN, f"trained on {net['config']['dataset']!r}, which does not mix "
                "digits with CIFAR images as hybrid does"
            )  # fmt: skip
        point = net["points"][0]
        exit1 = next(n for n in point["nodes"] if n["is_leaf"])
        totals = np.zeros(len(kinds))
        for node in point["nodes"]:
            if node["is_leaf"]:
                totals += np.array(node["class_counts"], dtype=float)
        at_exit1 = np.array(exit1["class_counts"], dtype=float)
        digit = np.array([k == "mnist" for k in kinds])
        digit_share = at_exit1[digit].sum() / totals[digit].sum()
        other_share = at_exit1[~digit].sum() / totals[~digit].sum()
        # The named statistic: how many times more often a digit leaves at exit 1 than a
        # CIFAR image ("kind ratio"); infinite when no CIFAR image does.
        if other_share > 0:
            ratio = digit_share / other_share
        else:
            ratio = math.inf if digit_share > 0 else 0.0
        accurate = exit1["accuracy"] is not None and exit1["accuracy"] > point["accuracy"]
        verdict = SUPPORTED if accurate and ratio >= 4 else NOT_SUPPORTED
        accuracy = "–" if exit1["accuracy"] is None else f"{exit1['accuracy']:.4f}"
        return Claim(
            claim,
            verdict,
            f"actor k_cpt 4e-9: exit 1 classifies {100 * digit_share:.1f} % of digit and "
            f"{100 * other_share:.2f} % of CIFAR test images (kind ratio {ratio:.1f}, needs "
            f"≥ 4) at accuracy {accuracy} against the net's {point['accuracy']:.4f} (needs "
            "higher)",
        )

    def relative_gain(self, static_name: str, dynamic_name: str) -> float | None:
        """Mean relative error reduction over the static curve: (static − dynamic) / static
        error, over the dynamic points inside the static MAC range."""
        static = self.curves[static_name]
        ratios = []
        for p in self.curves[dynamic_name]:
            reference = error_at(static, p.mean_macs)
            if reference:
                ratios.append((reference - p.error) / reference)
        return float(np.mean(ratios)) if ratios else None

    def wider_nets(self) -> Claim:
        claim = "wider nets keep or increase the relative advantage of dynamic routing (fig. 10)"
        pairs = [("cifar10-static", "cifar10-actor")] + [
            (f"cifar10-static-width{w}", f"cifar10-actor-width{w}") for w in (2, 3)
        ]
        names = [n for pair in pairs for n in pair]
        if not self.has(*names):
            return self.missing(claim, *names)
        gains = [self.relative_gain(*pair) for pair in pairs]
        if any(g is None for g in gains):
            return Claim(claim, NOT_RUN, "an actor curve misses its static MAC range")
        base, wide = gains[0], gains[1:]
        # "Keep": at least 80 % of width 1's relative error reduction, and positive.
        verdict = SUPPORTED if all(g > 0 and g >= 0.8 * base for g in wide) else NOT_SUPPORTED
        return Claim(
            claim,
            verdict,
            "mean relative error reduction vs static: width ×1 "
            + ", ×2 ".join(f"{100 * g:+.1f} %" for g in gains[:2])
            + f", ×3 {100 * gains[2]:+.1f} % (wider: needs > 0 and ≥ 80 % of width ×1's)",
        )

    def overfit_less(self) -> Claim:
        claim = "dynamic nets overfit less than static ones at equal MACs (§6)"
        if not self.has("hybrid-static", "hybrid-actor"):
            return self.missing(claim, "hybrid-static", "hybrid-actor")
        static, actor = self._gaps("hybrid-static"), self._gaps("hybrid-actor")
        if len(static) < 2 or not actor:
            return Claim(claim, NOT_RUN, "result files without train evaluations")
        inside = [(m, g) for m, g, _ in actor if static[0][0] <= m <= static[-1][0]]
        if not inside:
            return Claim(claim, NOT_RUN, "no actor net inside the static MAC range")
        xs, ys = [m for m, _, _ in static], [g for _, g, _ in static]
        reference = [float(np.interp(m, xs, ys)) for m, _ in inside]
        dynamic_gap = float(np.mean([g for _, g in inside]))
        static_gap = float(np.mean(reference))
        verdict = SUPPORTED if dynamic_gap < static_gap else NOT_SUPPORTED
        return Claim(
            claim,
            verdict,
            f"train − test accuracy, mean over {len(inside)} actor nets: {100 * dynamic_gap:.2f}"
            f" points; static nets at the same MACs (interpolated): {100 * static_gap:.2f} "
            "points (train accuracy on a seeded 10,000-image training subset)",
        )

    def resnet(self) -> Claim:
        claim = (
            "dynamic routing beats static truncations on a backbone the paper never used "
            "(ResNet-18 exits, CIFAR-10)"
        )
        names = ("cifar10-resnet18-static", "cifar10-resnet18-actor")
        if not self.has(*names):
            return self.missing(claim, *names)
        gain = mean_gain(self.curves[names[0]], self.curves[names[1]])
        if gain is None:
            return Claim(claim, NOT_RUN, "curves do not overlap the static MAC range")
        ratio = self.mac_ratio(*names)
        saving = "never reaches it" if ratio is None else f"needs {ratio[2]:.2f}× fewer MACs"
        wins, rule = beats_static(self.curves[names[0]], self.curves[names[1]])
        return Claim(
            claim,
            SUPPORTED if wins else NOT_SUPPORTED,
            f"mean error reduction vs the truncations {100 * gain[0]:+.2f} points over "
            f"{gain[1]} nets ({rule}); at the best truncation's accuracy the actor curve "
            f"{saving}{self._noise(names[1])}",
        )

    # ------------------------------------------------------------ routing policies
    def _learned_points(
        self, experiment: str, band: tuple[float, float] | None = None
    ) -> list[dict]:
        """The learned operating points of an experiment's networks, inside the band."""
        low, high = band or self.band
        return [
            point
            for analysis in self.policies.get(experiment, {}).values()
            for point in analysis["learned"]
            if low <= point["mean_macs"] <= high
        ]

    def learned_beats_thresholds(self) -> Claim:
        claim = (
            "learned routers beat confidence thresholds on the same exits "
            f"(hybrid actor, matched mean MACs, {band_label(self.band)})"
        )
        points = self._learned_points("hybrid-actor")
        if not points:
            return self.missing_policies(claim, "hybrid-actor")
        rows = [p["against_thresholds"]["confidence"] for p in points]
        return self._paired_verdict(
            claim,
            [(r["only_first"], r["only_second"], r["accuracy_difference"]) for r in rows],
            "learned routing",
            "the same net's confidence threshold at its nearest mean MACs",
        )

    def actor_beats_multi_exit(self, dataset: str = "hybrid") -> Claim:
        """``dataset``'s actor nets against its multi-exit net, in the band of its own
        static curve."""
        band = band_for(self.curves.get(f"{dataset}-static", []))
        claim = "actor training + learned routers beat multi-exit training + confidence thresholds"
        if dataset == "hybrid":
            claim += f" (the field's standard) at equal mean MACs (hybrid, {band_label(band)})"
        else:
            title = {"cifar10": "CIFAR-10"}.get(dataset, dataset)
            claim += f" on {title} too, at equal mean MACs ({band_label(band)})"
        actor, multi_exit = f"{dataset}-actor", f"{dataset}-multi-exit"
        points = self._learned_points(actor, band)
        baseline = [
            p
            for analysis in self.policies.get(multi_exit, {}).values()
            for p in analysis["confidence"]
            if "correct_bits" in p
        ]
        if not points or not baseline:
            return self.missing_policies(claim, actor, multi_exit, band=band)
        n = next(iter(self.policies[multi_exit].values()))["num_examples"]
        pairs = []
        for point in points:
            matched = min(baseline, key=lambda p: abs(p["mean_macs"] - point["mean_macs"]))
            counts = mcnemar_counts(
                unpack_bits(point["correct_bits"], n), unpack_bits(matched["correct_bits"], n)
            )
            pairs.append((*counts, point["accuracy"] - matched["accuracy"]))
        return self._paired_verdict(
            claim,
            pairs,
            "the actor",
            "the multi-exit net's confidence threshold at the nearest MACs",
        )

    @staticmethod
    def _paired_verdict(
        claim: str, pairs: list[tuple[int, int, float]], first: str, second: str
    ) -> Claim:
        """Supported when ``first`` is right on more of the examples only one of the two
        gets right, pooled over the operating points, with exact McNemar p < 0.05.

        Pooling treats the points' discordant pairs as independent; they share test images,
        so the p-value is a guide, and each point's own difference is given too."""
        only_first = sum(b for b, _, _ in pairs)
        only_second = sum(c for _, c, _ in pairs)
        p_value = mcnemar_p_value(only_first, only_second)
        wins = sum(d > 0 for _, _, d in pairs)
        mean = float(np.mean([d for _, _, d in pairs]))
        verdict = SUPPORTED if only_first > only_second and p_value < 0.05 else NOT_SUPPORTED
        return Claim(
            claim,
            verdict,
            f"{first} more accurate than {second} at {wins}/{len(pairs)} points (mean "
            f"{100 * mean:+.2f} points); examples only one gets right, pooled: {only_first} vs "
            f"{only_second}, McNemar p = {p_value:.2g}",
        )

    # ------------------------------------------------- policies on equal footing
    def _tables(self) -> list[tuple[str, dict]]:
        return policy_claims.equal_footing_tables(self.results)[0]

    def _step_claim(self, step: str, claim: str, first: str, second: str) -> Claim:
        tables = self._tables()
        cells = policy_claims.step_cells(tables, step)
        if not cells:
            return Claim(claim, NOT_RUN, "no equal-footing policy table")
        verdict = policy_claims.judge(cells)
        return Claim(
            claim,
            SUPPORTED if verdict.supported else NOT_SUPPORTED,
            verdict.describe(first, second),
        )

    def recalibration_helps(self) -> Claim:
        return self._step_claim(
            "+ recalibration",
            "recalibrating each exit (a temperature and a bias per class, fitted on validation) "
            "beats the best rule on raw exits at the same budget",
            "the best rule on raw or recalibrated exits",
            "the best rule on raw exits",
        )

    def combination_helps(self) -> Claim:
        return self._step_claim(
            "+ combination",
            "combining the answers already computed (a running ensemble, fitted on validation) "
            "beats the best rule on recalibrated exits at the same budget",
            "the best rule on any answers",
            "the best rule on raw or recalibrated exits",
        )

    def learned_decisions_help(self) -> Claim:
        claim = (
            "a learned per-example exit decision (the paper's routers or the scheduler, the "
            "one most accurate on validation) beats the best equal-footing baseline at the "
            "same budget"
        )
        cells = policy_claims.learned_cells(self._tables())
        if not cells:
            return Claim(claim, NOT_RUN, "no equal-footing policy table with a learned decision")
        verdict = policy_claims.judge(cells)
        return Claim(
            claim,
            SUPPORTED if verdict.supported else NOT_SUPPORTED,
            verdict.describe("the learned decision", "the best baseline (chosen on validation)"),
        )

    def learned_saves_macs(self) -> Claim:
        claim = (
            "the learned decision (the one most accurate on validation) needs fewer MACs than "
            "the best baseline at the accuracy the baseline reaches within the budget. Rule, "
            "fixed before measuring: the median saving over distinct (network, families, "
            "accuracy) cells where both test envelopes still rise (the accuracy at least one "
            "standard error below both peaks), supported when its 95 % bootstrap interval "
            "(test examples resampled, members' MACs held) lies above 0"
        )
        savings = policy_claims.mac_savings(self._tables())
        if savings is None:
            return Claim(claim, NOT_RUN, "no MAC saving measured (format 3 policy tables)")
        low, high = savings.interval()
        values = savings.values
        return Claim(
            claim,
            SUPPORTED if low > 0 else NOT_SUPPORTED,
            f"median saving {100 * savings.median:+.1f} % of the baseline's MACs over "
            f"{len(values)} cells (95 % interval {100 * low:+.1f} to {100 * high:+.1f} %); "
            f"cells from {100 * min(values):+.1f} to {100 * max(values):+.1f} %",
        )

    def budgets_met(self) -> Claim:
        """Whether a policy fitted to a budget on validation stays within it on test."""
        tolerance = policy_claims.BUDGET_TOLERANCE
        claim = (
            "every policy fitted to a MAC budget on validation spends at most the budget "
            f"+{100 * tolerance:.0f} % on test (every equal-footing policy table)"
        )
        cells = policy_claims.budget_cells(self._tables())
        if not cells:
            return Claim(claim, NOT_RUN, "no equal-footing policy table")
        low, high = min(cells), max(cells)
        over = sum(deviation > tolerance for deviation, *_ in cells)
        return Claim(
            claim,
            NOT_SUPPORTED if over else SUPPORTED,
            f"{len(cells) - over} of {len(cells)} (network, budget, policy) cells within; test "
            f"MACs from {100 * low[0]:+.1f} % ({low[2]} on {low[1]} at {low[3] / 1e6:.2f} M) to "
            f"{100 * high[0]:+.1f} % ({high[2]} on {high[1]} at {high[3] / 1e6:.2f} M) of the "
            "budget (a policy may spend less: it takes its most accurate member within budget)",
        )

    def _guarantee_rows(self) -> list[tuple[str, dict]]:
        return [
            (study_label(name, study), row)
            for name, study in sorted(self.studies.items())
            if study.get("study") == "guarantees"
            for row in study["rows"]
        ]

    def guarantees_hold(self) -> Claim:
        claim = (
            "guaranteed accuracy targets hold on unseen data: over random calibration/"
            "evaluation partitions, the violation rate is at most delta within two binomial "
            "standard errors, at every target and delta"
        )
        rows = [
            (name, r)
            for name, r in self._guarantee_rows()
            if r["method"] != "naive point estimate" and r["violation_rate"] is not None
        ]
        if not rows:
            return Claim(claim, NOT_RUN, "no guarantee study (`dynroute study guarantees RUN`)")
        over = [
            (name, r)
            for name, r in rows
            if r["violation_rate"] > r["delta"] + 2 * r["standard_error"]
        ]
        worst = max(rows, key=lambda nr: nr[1]["violation_rate"] - nr[1]["delta"])
        naive = [
            r["violation_rate"]
            for _, r in self._guarantee_rows()
            if r["method"] == "naive point estimate" and r["violation_rate"] is not None
        ]
        naive_text = (
            f"; the naive point estimate violates at {100 * min(naive):.0f}–"
            f"{100 * max(naive):.0f} %"
            if naive
            else ""
        )
        name, row = worst
        return Claim(
            claim,
            NOT_SUPPORTED if over else SUPPORTED,
            f"{len(rows) - len(over)} of {len(rows)} (network, method, target, delta) cells "
            f"within; the closest: {row['method']} on {name}, target {row['target']:g}, delta "
            f"{row['delta']:g}: {100 * row['violation_rate']:.1f} % of {row['partitions']} "
            f"draws ({row['certified']} certified){naive_text}",
        )

    def per_exit_guarantees_save_more(self) -> Claim:
        claim = (
            "under the same guarantee, per-exit thresholds spend fewer MACs than one threshold "
            "shared by every exit (the 'Fast yet Safe' baseline)"
        )
        cells: dict[tuple[str, float, float], dict[str, float]] = {}
        for name, row in self._guarantee_rows():
            if row["macs_saved"] is not None and row["method"] != "naive point estimate":
                cells.setdefault((name, row["target"], row["delta"]), {})[row["method"]] = row[
                    "macs_saved"
                ]
        pairs = [
            (key, saved["per-exit thresholds"] - saved["one shared threshold"])
            for key, saved in cells.items()
            if len(saved) == 2
        ]
        if not pairs:
            return Claim(claim, NOT_RUN, "no guarantee study with both methods")
        better = sum(d > 0 for _, d in pairs)
        differences = [d for _, d in pairs]
        return Claim(
            claim,
            SUPPORTED if better == len(pairs) else NOT_SUPPORTED,
            f"per-exit thresholds save more at {better} of {len(pairs)} (network, target, "
            f"delta) cells; difference in the share of the deepest exit's MACs saved "
            f"{100 * min(differences):+.1f} to {100 * max(differences):+.1f} points",
        )

    def learned_across_splits(self) -> Claim:
        claim = (
            "the learned decision's mean gain over the best baseline (over the distinct binding "
            "budgets) is positive on at least 2 of 3 validation splits, for every network "
            "trained on 3 (a sign: each split's mean is given with its standard error, and "
            "only a mean beyond two standard errors is more than noise)"
        )
        networks = sorted({label for label, _ in self._tables()})
        spread = policy_claims.split_spread({"0": self.results, **self.variants}, networks)
        rows = {
            label: steps["learned vs best baseline"]
            for label, steps in spread.items()
            if len(steps.get("learned vs best baseline", [])) >= 3
        }
        if not rows:
            return Claim(claim, NOT_RUN, "no network has equal-footing tables on 3 splits")
        parts, ok = [], True
        for label, gains in rows.items():
            positive = sum(g.mean > 0 for g in gains)
            beyond = sum(abs(g.mean) > 2 * g.standard_error for g in gains)
            ok &= positive >= 2
            shown = ", ".join(f"{100 * g.mean:+.2f} ± {100 * g.standard_error:.2f}" for g in gains)
            parts.append(
                f"{label}: positive on {positive} of {len(gains)} ({shown} points; beyond two "
                f"standard errors on {beyond})"
            )
        return Claim(claim, SUPPORTED if ok else NOT_SUPPORTED, "; ".join(parts))

    def recipe_beats_multi_exit(self, dataset: str) -> Claim:
        """Per budget, dynroute's recipe chosen on validation (any network of the dataset's
        chain experiments, any policy) against the multi-exit net's best baseline."""
        title = {"cifar10": "CIFAR-10"}.get(dataset, dataset)
        claim = (
            "dynroute's best recipe (any training, any policy, chosen on validation) beats "
            f"multi-exit training + the best equal-footing baseline ({title})"
        )
        chains = (f"{dataset}-multi-exit", f"{dataset}-actor")
        tables = [
            (label, table) for label, table in self._tables() if label.split("/")[0] in chains
        ]
        pairs = policy_claims.recipe_cells(tables, f"{dataset}-multi-exit/multi-exit")
        if not pairs:
            return Claim(claim, NOT_RUN, f"no equal-footing policy table for {dataset}-multi-exit")
        verdict = policy_claims.judge(cell for cell, _ in pairs)
        chosen = ", ".join(sorted({label for _, label in pairs}))
        return Claim(
            claim,
            SUPPORTED if verdict.supported else NOT_SUPPORTED,
            f"chosen from {chosen}; "
            + verdict.describe("the recipe", "multi-exit + the best baseline"),
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
            self.critic_clserr,
            self.tree_vs_chain,
            self.exits_specialise,
            self.wider_nets,
            self.overfit_less,
            self.learned_beats_thresholds,
            self.actor_beats_multi_exit,
            lambda: self.actor_beats_multi_exit("cifar10"),
            self.resnet,
            lambda: self.recipe_beats_multi_exit("hybrid"),
            lambda: self.recipe_beats_multi_exit("cifar10"),
        ]
        if self._tables():
            checks += [
                self.recalibration_helps,
                self.combination_helps,
                self.learned_decisions_help,
                self.learned_saves_macs,
                self.budgets_met,
                self.learned_across_splits,
            ]
        if self._guarantee_rows():
            checks += [self.guarantees_hold, self.per_exit_guarantees_save_more]
        return [check() for check in checks]


def check_claims(
    results: Results,
    variants: dict[str, Results] | None = None,
    studies: dict[str, dict] | None = None,
) -> list[Claim]:
    """Every claim's verdict; ``variants``: the same registry trained on other seeds;
    ``studies``: the scale's studies (``dynroute study``)."""
    return ClaimChecker(results, variants, studies).all()
