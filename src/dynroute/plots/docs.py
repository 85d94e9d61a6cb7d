"""Numbers in the documentation, generated from the result files: never typed.

A document marks a generated block with two comments::

    <!-- generated: cpu/policy-findings -->
    ...
    <!-- end generated -->

``dynroute report --scale cpu`` rewrites every ``cpu/...`` block of the documents it is
given (README.md and docs/*.md by default) from ``results/cpu``, and a test fails when a
committed block differs from what the committed results give. A block's name is its scale
and a generator registered here (``BLOCKS``); each generator reads the same claims and
studies the report does, so a number in the docs is the report's number.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from dynroute.core.errors import DynrouteError
from dynroute.experiments.claims import Claim, check_claims
from dynroute.experiments.results import Results, load_results, load_studies, load_variants
from dynroute.io.atomic import write_text_atomic

_BLOCK = re.compile(
    r"(?P<open><!-- generated: (?P<name>[\w.-]+/[\w.-]+) -->\n)(?P<body>.*?)(?P<close><!-- end "
    r"generated -->)",
    re.S,
)


@dataclass
class Evidence:
    """What a scale's results say, loaded once for every block of that scale."""

    scale: str
    results: Results
    studies: dict[str, dict]
    claims: list[Claim]
    results_dir: str | os.PathLike[str] = "results"

    @classmethod
    def load(cls, results_dir: str | os.PathLike[str], scale: str) -> Evidence:
        results = load_results(results_dir, scale)
        variants = load_variants(results_dir, scale)
        studies = load_studies(results_dir, scale)
        bf16 = load_variants(results_dir, scale, bf16=True)
        claims = check_claims(results, variants, studies, bf16)
        return cls(scale, results, studies, claims, results_dir)

    def claims_starting(self, start: str) -> list[Claim]:
        """The claims whose text starts with ``start`` (one per dataset where it repeats)."""
        return [c for c in self.claims if c.claim.startswith(start)]


#: name -> generator of the block's lines from a scale's evidence.
BLOCKS: dict[str, Callable[[Evidence], list[str]]] = {}


def block(name: str) -> Callable[[Callable[[Evidence], list[str]]], Callable]:
    """Register a generated block (its name without the scale)."""

    def register(generate: Callable[[Evidence], list[str]]) -> Callable:
        BLOCKS[name] = generate
        return generate

    return register


def claim_lines(evidence: Evidence, starts: Iterable[str]) -> list[str]:
    """One bullet per claim: its verdict in bold, the claim, and its evidence."""
    lines = [
        f"- **{found.verdict}**: {found.claim}. {found.evidence}."
        for start in starts
        for found in evidence.claims_starting(start)
    ]
    return lines or ["- (no results for these claims at this scale)"]


def render(name: str, evidence: Evidence) -> str:
    """A block's body: its generator's lines, each ending in a newline."""
    kind = name.split("/", 1)[1]
    if kind not in BLOCKS:
        raise DynrouteError(f"unknown generated block {name!r}; known: {', '.join(BLOCKS)}")
    return "".join(f"{line}\n" for line in BLOCKS[kind](evidence))


def rewrite(
    documents: Iterable[str | os.PathLike[str]], results_dir: str | os.PathLike[str], scale: str
) -> list[Path]:
    """Rewrite every ``scale/...`` block of ``documents``; returns the documents changed."""
    evidence: Evidence | None = None
    changed = []
    for document in documents:
        path = Path(document)
        text = path.read_text(encoding="utf-8")

        def fill(match: re.Match[str]) -> str:
            nonlocal evidence
            name = match["name"]
            if not name.startswith(f"{scale}/"):
                return match[0]
            evidence = evidence or Evidence.load(results_dir, scale)
            return match["open"] + render(name, evidence) + match["close"]

        new = _BLOCK.sub(fill, text)
        if new != text:
            write_text_atomic(path, new)
            changed.append(path)
    return changed


def stale(
    documents: Iterable[str | os.PathLike[str]], results_dir: str | os.PathLike[str]
) -> list[tuple[Path, str]]:
    """Every (document, block) whose body differs from what the results give now."""
    cache: dict[str, Evidence] = {}
    out = []
    for document in documents:
        path = Path(document)
        for match in _BLOCK.finditer(path.read_text(encoding="utf-8")):
            scale = match["name"].split("/", 1)[0]
            if scale not in cache:
                cache[scale] = Evidence.load(results_dir, scale)
            if match["body"] != render(match["name"], cache[scale]):
                out.append((path, match["name"]))
    return out


def default_documents(root: str | os.PathLike[str] = ".") -> list[Path]:
    """README.md and docs/*.md under ``root`` that hold a generated block."""
    base = Path(root)
    candidates = [base / "README.md", *sorted((base / "docs").glob("*.md"))]
    return [p for p in candidates if p.is_file() and "<!-- generated: " in p.read_text("utf-8")]


# --------------------------------------------------------------------------- the blocks
#: The policy evidence's claims, in the order the documents discuss them.
POLICY_CLAIMS = (
    "recalibrating each exit",
    "combining the answers",
    "a learned per-example exit decision",
    "the learned decision (the one most accurate on validation) needs fewer MACs",
    "the learned decision's mean gain",
    "learned routers beat",
)
GUARANTEE_CLAIMS = ("guaranteed accuracy targets hold", "under the same guarantee")
ROUTER_CLAIMS = (
    "learned routers beat",
    "actor training + learned routers beat multi-exit",
    "a learned per-example exit decision",
)


@block("policy-findings")
def _policy_findings(evidence: Evidence) -> list[str]:
    return claim_lines(evidence, POLICY_CLAIMS)


@block("guarantee-findings")
def _guarantee_findings(evidence: Evidence) -> list[str]:
    return claim_lines(evidence, GUARANTEE_CLAIMS)


@block("router-findings")
def _router_findings(evidence: Evidence) -> list[str]:
    return claim_lines(evidence, ROUTER_CLAIMS)


@block("claims")
def _claims(evidence: Evidence) -> list[str]:
    lines = ["| claim | verdict | evidence |", "| --- | --- | --- |"]
    return lines + [f"| {c.claim} | **{c.verdict}** | {c.evidence} |" for c in evidence.claims]


@block("lead")
def _lead(evidence: Evidence) -> list[str]:
    """Per lead study: the best static network and the routed point that matches it."""
    studies = {n: s for n, s in evidence.studies.items() if s.get("study") == "lead"}
    if not studies:
        return ["(no lead study at this scale: `dynroute study lead RUN --static EXPERIMENT`)"]
    from dynroute.plots.report import lead_table

    return lead_table(studies)


RECIPE_CLAIMS = ("the best exit-training recipe",)


@block("recipe-findings")
def _recipe_findings(evidence: Evidence) -> list[str]:
    return claim_lines(evidence, RECIPE_CLAIMS)


def _budgets(budgets: list[float]) -> str:
    return ", ".join(f"{b / 1e6:.2f} M" for b in budgets) or "–"


@block("recipes")
def _recipes(evidence: Evidence) -> list[str]:
    """Each exit-training recipe against plain multi-exit training of the same chain."""
    from dynroute.experiments.claims import DATASETS
    from dynroute.experiments.claims.recipes import recipe_rows

    rows = recipe_rows(evidence.results)
    if not rows:
        return ["(no recipe trained beside plain multi-exit training at this scale)"]
    lines = [
        "| recipe | data | binding cells | ahead | behind | ahead at budget (MACs) "
        "| mean difference, points | recalibration adds (plain) | training time (plain) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        recalibration = "–" if row.recalibration is None else f"{100 * row.recalibration:+.2f}"
        plain = "–" if row.plain_recalibration is None else f"{100 * row.plain_recalibration:+.2f}"
        lines.append(
            f"| {row.recipe} | {DATASETS[row.dataset]} | {len(row.verdict.cells)} | "
            f"{row.verdict.ahead} | {row.verdict.behind} | {_budgets(row.verdict.budgets())} | "
            f"{100 * row.mean_difference:+.2f} | "
            f"{recalibration} ({plain}) | {row.train_seconds / 60:.0f} min "
            f"({row.plain_train_seconds / 60:.0f} min) |"
        )
    return [*lines, "", *claim_lines(evidence, RECIPE_CLAIMS)]


@block("recipe-exits")
def _recipe_exits(evidence: Evidence) -> list[str]:
    """Each exit's own test accuracy (alone, raw answers) under each recipe and plain
    multi-exit training, beside the static net of each depth: where along the chain a
    recipe gains or loses."""
    from dynroute.experiments.claims import DATASETS
    from dynroute.experiments.registry import RECIPES

    rows: list[tuple[str, str, list[str]]] = []
    width = 0
    for dataset, title in DATASETS.items():
        for recipe in ("", *RECIPES):
            name = f"{dataset}-multi-exit{'-' + recipe if recipe else ''}"
            result = evidence.results.get(name, {}).get("multi-exit") or {}
            exits = result.get("policies", {}).get("single_exit")
            if exits:
                width = max(width, len(exits))
                rows.append(
                    (title, recipe or "plain", [f"{100 * e['accuracy']:.1f}" for e in exits])
                )
        statics = evidence.results.get(f"{dataset}-static", {})
        if rows and rows[-1][0] == title and statics:  # static-k: k segments, one exit
            shown = [
                f"{100 * statics[f'static-{k}']['accuracy']:.1f}"
                if f"static-{k}" in statics
                else "–"
                for k in range(1, width + 1)
            ]
            rows.append((title, "static-k alone", shown))
    if not rows:
        return ["(no multi-exit network trained at this scale)"]
    header = " | ".join(f"exit {k}" for k in range(1, width + 1))
    lines = [f"| data | recipe | {header} |", "| --- | --- |" + " --- |" * width]
    return lines + [f"| {title} | {what} | {' | '.join(shown)} |" for title, what, shown in rows]


@block("policy-spread")
def _policy_spread(evidence: Evidence) -> list[str]:
    from dynroute.experiments.results import load_variants
    from dynroute.plots.report import spread_table

    lines = spread_table(evidence.results, load_variants(evidence.results_dir, evidence.scale))
    return lines or ["(no network trained on several validation splits at this scale)"]


@block("policy-steps")
def _policy_steps(evidence: Evidence) -> list[str]:
    """Each decomposition step over the step before, and the learned decision over the best
    baseline: distinct binding cells, how many are significantly ahead or behind."""
    from dynroute.experiments import policy_claims

    tables, _ = policy_claims.equal_footing_tables(evidence.results)
    families = [
        (
            "+ recalibration, over the best raw rule",
            policy_claims.step_cells(tables, "+ recalibration"),
        ),
        (
            "+ combination, over the best rule on raw or recalibrated answers",
            policy_claims.step_cells(tables, "+ combination"),
        ),
        (
            "the learned decision (the scheduler or the routers, on any answers), over the best "
            "baseline",
            policy_claims.learned_cells(tables),
        ),
    ]
    lines = [
        "| step | distinct binding cells | significantly ahead | significantly behind | mean gain "
        "| test MACs, first side against second |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for title, cells in families:
        if not cells:
            continue
        verdict = policy_claims.judge(cells)
        differences = [c.difference for c in verdict.cells]
        macs = [c.macs for c in verdict.cells if c.macs is not None]
        ratio = (
            "–"
            if not macs
            else f"{min(a / b for a, b in macs):.2f}× to {max(a / b for a, b in macs):.2f}×"
        )
        lines.append(
            f"| {title} | {len(verdict.cells)} | {verdict.ahead} | {verdict.behind} | "
            f"{100 * sum(differences) / len(differences):+.2f} points | {ratio} |"
        )
    return lines


@block("guarantees")
def _guarantees(evidence: Evidence) -> list[str]:
    from dynroute.plots.report import guarantee_table

    studies = {n: s for n, s in evidence.studies.items() if s.get("study") == "guarantees"}
    if not studies:
        return ["(no guarantee study at this scale: `dynroute study guarantees RUN`)"]
    return guarantee_table(studies)


@block("held-out")
def _held_out(evidence: Evidence) -> list[str]:
    from dynroute.plots.report import held_out_lines

    lines = held_out_lines(evidence.studies)
    return [line.replace("### ", "#### ") for line in lines[1:]] or [
        "(no held-out study at this scale: `dynroute study held-out RUN`)"
    ]


# --------------------------------------------------------------------------- benchmarks


def _bench(evidence: Evidence, name: str) -> dict | None:
    """A benchmark's JSON record under ``results/bench/<scale>/`` (None if absent)."""
    path = Path(evidence.results_dir) / "bench" / evidence.scale / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@block("soak")
def _soak(evidence: Evidence) -> list[str]:
    """``benchmarks/soak_serve.py``'s record: what the soak served and its checks."""
    record = _bench(evidence, "soak.json")
    if record is None:
        return ["(no soak at this scale: `python benchmarks/soak_serve.py EXPORT --json ...`)"]
    soak, unloaded, stop = record["soak"], record["unloaded"], record["sigterm"]
    statuses = ", ".join(f"{n:,} × {code}" for code, n in sorted(soak["healthy_statuses"].items()))
    checks = ", ".join(
        f"{name}: {'ok' if ok else 'FAILED'}" for name, ok in record["checks"].items()
    )
    return [
        f"{record['minutes']:g} minutes, {record['workers']} workers, {record['concurrency']} "
        f"connections of which {record['hostile_clients']} hostile, on "
        f"{record['machine']['cores']} cores: {soak['healthy_requests']:,} healthy requests "
        f"({statuses}); healthy p99 "
        f"{soak['p99_ms']:.1f} ms against {unloaded['p99_ms']:.1f} ms unloaded; resident memory "
        f"{record['rss_mb_second_fifth']:.1f} MB over the soak's second fifth and "
        f"{record['rss_mb_last_fifth']:.1f} MB over its last; `/livez` p99 "
        f"{soak['livez_p99_ms']:.1f} ms, slowest {soak['livez_slowest_ms']:.1f} ms; SIGTERM under "
        f"load: exit {stop['exit_status']} after {stop['seconds']:.2f} s (deadline "
        f"{stop['deadline_s']:g} s). Checks: {checks}.",
    ]


@block("bf16-accuracy")
def _bf16_accuracy(evidence: Evidence) -> list[str]:
    """Each network trained in bf16 against its float32 seeds (the bf16 claim's rows)."""
    from dynroute.experiments.claims.precision import precision_rows

    bf16 = load_variants(evidence.results_dir, evidence.scale, bf16=True)
    if not bf16:
        return [
            "(no network trained in bf16 at this scale: `dynroute sweep EXPERIMENT --scale "
            f"{evidence.scale} --bf16`, beside float32 runs on `--seed 1` and `--seed 2`)"
        ]
    float32 = {"0": evidence.results, **load_variants(evidence.results_dir, evidence.scale)}
    lines = [
        "| network | measure | float32, by seed | bf16 | exit shares: bf16 from float32 "
        "(seeds apart) | holds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in precision_rows(float32, bf16):
        shares = (
            "–"
            if row.share_distance is None
            else f"{row.share_distance:.3f} ({row.seed_distance:.3f})"
        )
        holds = (
            "too few float32 seeds"
            if not row.judged
            else ("yes" if row.accuracy_holds and row.shares_hold else "**no**")
        )
        lines.append(
            f"| {row.label} | {row.measure} | {_percents(row.float32)} | "
            f"{_percents(row.bf16)} | {shares} | {holds} |"
        )
    return lines


def _percents(values: dict[str, float]) -> str:
    return ", ".join(f"{100 * v:.2f} %" for _, v in sorted(values.items())) or "–"


@block("deploy-int8")
def _deploy_int8(evidence: Evidence) -> list[str]:
    """``benchmarks/bench_deploy.py --int8``'s record: the int8 export against float32."""
    record = _bench(evidence, "deploy-int8.json")
    if record is None or "int8" not in record:
        return ["(no int8 benchmark at this scale: `python benchmarks/bench_deploy.py RUN --int8`)"]
    int8, accuracy, macs = record["int8"], record["int8"]["test_accuracy"], record["int8"]["macs"]
    one = int8["batch1_ms"]
    info = record["machine"]
    return [
        "| | float32 | int8 |",
        "| --- | --- | --- |",
        f"| test accuracy | {100 * accuracy['float32']:.2f} % | {100 * accuracy['int8']:.2f} % |",
        f"| mean MACs | {macs['float32'] / 1e6:.2f} M | {macs['int8'] / 1e6:.2f} M |",
        f"| batch 1 p50 / p99 | {one['routed']['p50']:.3f} / {one['routed']['p99']:.3f} ms "
        f"| {one['routed int8']['p50']:.3f} / {one['routed int8']['p99']:.3f} ms |",
        "",
        f"At batch 256 the int8 routed export runs {int8['batch256_int8_over_float32']:.2f}× "
        f"as fast as the float32 one, and {int8['batch256_int8_over_static_int8']:.2f}× as fast "
        f"as {int8['static']} in int8 (the static net of its test accuracy) for a MAC ratio of "
        f"{int8['mac_ratio_vs_static_int8']:.2f} ({int8['share_of_mac_ratio']:.2f} of it); "
        f"{int8['models_in_int8']} of its {int8['models']} models run in int8. Machine: "
        f"{info.get('cpu', '?')}, {info['cores']} cores, onnxruntime threads "
        f"{info.get('onnxruntime_threads', '?')}.",
    ]


@block("train-precision")
def _train_precision(evidence: Evidence) -> list[str]:
    """``benchmarks/bench_train.py``'s record: float32 and bf16 side by side."""
    return _train_table(evidence, "train-bf16.json")


@block("train-precision-compiled")
def _train_precision_compiled(evidence: Evidence) -> list[str]:
    """The same with ``--compile`` (every dynroute variant compiled; the naive reference
    stays eager, as its author would write it)."""
    return _train_table(evidence, "train-bf16-compile.json")


def _train_table(evidence: Evidence, name: str) -> list[str]:
    record = _bench(evidence, name)
    if record is None:
        return [
            "(no training benchmark at this scale: `python benchmarks/bench_train.py --json ...`)"
        ]
    lines = ["| variant | images/s (median of rounds) |", "| --- | --- |"]
    for name in ("actor chain", "actor chain bf16", "static-8", "static-8 bf16", "naive reference"):
        if name in record:
            lines.append(f"| {name} | {record[name]['images_per_second']:,.0f} |")
    lines += ["", "| ratio | value |", "| --- | --- |"]
    for title, value in record["ratios"].items():
        shown = f"{100 * value:+.1f} %" if title.startswith("routing overhead") else f"{value:.2f}×"
        lines.append(f"| {title} | {shown} |")
    info = record["machine"]
    machine = f"{info.get('cpu', '?')}, {info['cores']} cores, torch {info.get('torch', '?')}"
    return [*lines, "", f"Machine: {machine}."]
