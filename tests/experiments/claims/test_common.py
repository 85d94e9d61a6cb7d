"""The claim registry: a claim is one registered function, checked in topic order."""

from __future__ import annotations

from dynroute.experiments import claims
from dynroute.experiments.claims import (
    CLAIMS,
    NOT_RUN,
    SUPPORTED,
    Claim,
    Context,
    check_claims,
    register_claim,
)


def test_a_claim_defined_anywhere_is_checked_with_no_list_edited() -> None:
    @register_claim
    def three_experiments(context: Context) -> Claim:
        found = len(context.results)
        return Claim("three experiments ran", SUPPORTED if found == 3 else NOT_RUN, f"{found}")

    @register_claim
    def not_at_this_scale(context: Context) -> None:
        return None  # a claim that does not apply is left out, not reported as not run

    @register_claim
    def per_dataset(context: Context) -> list[Claim]:
        return [Claim(f"a claim on {name}", NOT_RUN, "") for name in ("a", "b")]

    try:
        found = check_claims({"a": {}, "b": {}, "c": {}})
    finally:
        for check in (three_experiments, not_at_this_scale, per_dataset):
            CLAIMS.remove(check)
    # Registered outside the topic modules: after every topic's claims, in its own order.
    assert [c.claim for c in found[-3:]] == [
        "three experiments ran",
        "a claim on a",
        "a claim on b",
    ]
    assert found[-3].verdict == SUPPORTED and found[-3].evidence == "3"
    assert "three experiments ran" not in [c.claim for c in check_claims({})]


def test_claims_come_topic_by_topic_whatever_the_import_order() -> None:
    # ruff sorts the topics' imports alphabetically: the report's order is TOPICS'.
    assert claims.TOPICS[0] is claims.paper and claims.footing.__name__ < claims.paper.__name__
    texts = [c.claim for c in check_claims({})]
    firsts = ("dynamic beats static", "dynamic nets overfit less", "learned routers beat")
    firsts += ("dynroute's best recipe",)
    positions = [next(i for i, t in enumerate(texts) if t.startswith(s)) for s in firsts]
    assert positions == sorted(positions) and positions[0] == 0


def test_without_results_every_claim_that_applies_is_not_run() -> None:
    found = check_claims({})
    assert found and {c.verdict for c in found} == {NOT_RUN}
    assert found[0].evidence == "missing: hybrid-static, hybrid-actor"


def test_the_context_computes_a_shared_value_once() -> None:
    calls = []

    def count(results: dict) -> int:
        calls.append(1)
        return len(results)

    context = Context({"a": {}})
    assert context.once(count) == 1 and context.once(count) == 1 and len(calls) == 1
    assert context.missing("a claim", "a", "b").evidence == "missing: a, b"
