"""What every claim shares: the verdict, the registry, and the context claims read.

A claim is a function that takes the :class:`Context` of one scale's results and returns a
:class:`Claim`, a list of them (one per dataset, recipe or study), or None where it does
not apply at this scale (no policy table, no study). ``@register_claim`` adds it to
``CLAIMS``; ``dynroute.experiments.claims.check_claims`` runs them all. The context is
built once per report, so claims share the curves instead of each recomputing them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from dynroute.experiments.claims.curves import band_for
from dynroute.experiments.results import Results, curve, policy_analyses

SUPPORTED, NOT_SUPPORTED, NOT_RUN = "supported", "not supported", "not run"
#: The datasets that per-dataset claims compare, in report order, with their titles.
DATASETS = {"hybrid": "hybrid", "cifar10": "CIFAR-10"}

Value = TypeVar("Value")


@dataclass
class Claim:
    claim: str
    verdict: str
    evidence: str


class Context:
    """One scale's results and what several claims read from them, computed once."""

    def __init__(
        self,
        results: Results,
        variants: dict[str, Results] | None = None,
        studies: dict[str, dict] | None = None,
        bf16: dict[str, Results] | None = None,
    ) -> None:
        self.results = results
        #: The same registry trained on other seeds (validation splits drawn afresh).
        self.variants = variants or {}
        #: Networks of the registry trained in bfloat16 (``sweep --bf16``), by seed.
        self.bf16 = bf16 or {}
        #: The scale's studies (``dynroute study``), by name.
        self.studies = studies or {}
        self.curves = {name: curve(networks) for name, networks in results.items()}
        self.policies = policy_analyses(results)
        self.band = band_for(self.curves.get("hybrid-static", []))
        self._computed: dict[Callable[[Results], Any], Any] = {}

    def once(self, compute: Callable[[Results], Value]) -> Value:
        """``compute(results)``, computed on first use only: a topic's claims share what is
        costly to derive (policy tables, recipe comparisons) without recomputing it."""
        if compute not in self._computed:
            self._computed[compute] = compute(self.results)
        return self._computed[compute]

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
        """The claim, not run, naming the experiments absent or still incomplete."""
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


#: What a claim function returns: one claim, several, or None where it does not apply.
Checked = Claim | list[Claim] | None
ClaimCheck = Callable[[Context], Checked]
#: Every registered claim, in registration order (``check_claims`` orders them by topic).
CLAIMS: list[ClaimCheck] = []


def register_claim(check: ClaimCheck) -> ClaimCheck:
    """Register a claim, so that the report checks it with no list to edit."""
    CLAIMS.append(check)
    return check
