"""The public API: what ``import dynroute`` offers, that it is documented, and that it is light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import dynroute

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"

PUBLIC = {
    "fit", "load", "FitResult", "TrainConfig", "Trainer",
    "build_model", "model_names", "register_model", "routed_chain", "static_truncation",
    "RoutedTree", "Node", "tree_costs", "load_dataset", "BatchLoader",
    "Policy", "POLICIES", "EarlyExitEngine", "evaluate", "calibrate", "DynrouteError",
}  # fmt: skip


def test_the_public_names_are_exactly_these_and_all_resolve() -> None:
    assert set(dynroute.__all__) == PUBLIC | {"__version__"}
    for name in PUBLIC:
        assert getattr(dynroute, name) is not None
    assert isinstance(dynroute.__version__, str)


def test_every_public_name_is_documented_in_docs_api() -> None:
    text = API_DOC.read_text()
    documented = set(re.findall(r"^\| `([A-Za-z_]+)", text, flags=re.M))
    assert documented >= PUBLIC, f"undocumented: {sorted(PUBLIC - documented)}"


def test_import_dynroute_loads_no_torch_until_a_name_needs_it() -> None:
    code = (
        "import sys, dynroute\n"
        "assert 'torch' not in sys.modules, 'import dynroute loaded torch'\n"
        "dynroute.Policy('confidence', 0.9)\n"
        "assert 'torch' not in sys.modules, 'Policy loaded torch'\n"
        "dynroute.build_model('chain')\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_names_raise_attribute_error() -> None:
    try:
        dynroute.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
