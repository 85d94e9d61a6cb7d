"""Checkpoints rebuild their model from the spec and refuse anything but plain data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynroute.core.errors import DynrouteError
from dynroute.nn import checkpoint
from dynroute.nn.models import build_model


class Payload:
    """A pickled object that would leave a marker file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def tree():
    torch.manual_seed(0)
    return build_model("chain", num_classes=5, dynamic_k_cpt=True)


def test_round_trip(tree, tmp_path: Path) -> None:
    optimizer = torch.optim.SGD(tree.parameters(), lr=0.1, momentum=0.9)
    tree(torch.rand(4, 3, 32, 32), 1e-8).logits[1].sum().backward()
    optimizer.step()
    path = tmp_path / "run" / "model.pt"
    extra = {"step": 7, "config": {"lr": 0.1, "name": "x"}, "rng": torch.get_rng_state()}
    checkpoint.save(path, tree, optimizer.state_dict(), extra)
    checkpoint.save(path, tree, optimizer.state_dict(), extra)  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left

    loaded = checkpoint.load_model(path)
    assert loaded.spec == tree.spec and not loaded.training
    for key, value in tree.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(3, 3, 32, 32)
    tree.eval()
    torch.testing.assert_close(loaded(x, 2e-8).logits[15], tree(x, 2e-8).logits[15])

    raw = checkpoint.load_checkpoint(path)
    assert raw["format"] == 1 and raw["extra"]["step"] == 7
    optimizer.load_state_dict(raw["optimizer_state"])


def _write(path: Path, tree, **changes) -> Path:
    payload = {"format": 1, "spec": dict(tree.spec), "state_dict": tree.state_dict(), "extra": {}}
    payload.update(changes)
    torch.save(payload, path)
    return path


def test_state_dict_mismatches(tree, tmp_path: Path) -> None:
    state = dict(tree.state_dict())
    key = next(iter(state))
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(DynrouteError, match=rf"missing: {key}"):
        checkpoint.load_model(_write(tmp_path / "a.pt", tree, state_dict=missing))

    extra = {**state, "root.bogus": torch.zeros(1)}
    with pytest.raises(DynrouteError, match="unexpected: root.bogus"):
        checkpoint.load_model(_write(tmp_path / "b.pt", tree, state_dict=extra))

    wider = {**tree.spec, "width": 2}
    shapes = r"shape mismatch: \S+ \(model \(32, 3, 3, 3\), stored \(16, 3, 3, 3\)\)"
    with pytest.raises(DynrouteError, match=shapes):
        checkpoint.load_model(_write(tmp_path / "c.pt", tree, spec=wider))

    with pytest.raises(DynrouteError, match="invalid model spec"):
        checkpoint.load_model(_write(tmp_path / "d.pt", tree, spec={"bogus": 1}))


def test_missing_corrupt_and_foreign_files(tree, tmp_path: Path) -> None:
    with pytest.raises(DynrouteError, match="checkpoint not found"):
        checkpoint.load_model(tmp_path / "nothing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DynrouteError, match="corrupt"):
        checkpoint.load_model(garbage)
    truncated = tmp_path / "truncated.pt"
    checkpoint.save(truncated, tree)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(DynrouteError, match="corrupt"):
        checkpoint.load_checkpoint(truncated)
    with pytest.raises(DynrouteError, match="format 2"):
        checkpoint.load_checkpoint(_write(tmp_path / "future.pt", tree, format=2))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DynrouteError, match="not a dynroute checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "list.pt")


def test_pickled_objects_are_never_run(tree, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = _write(tmp_path / "evil.pt", tree, extra={"payload": Payload(marker)})
    with pytest.raises(DynrouteError, match="never unpickled"):
        checkpoint.load_model(path)
    assert not marker.exists()


def test_save_refuses_non_plain_extra(tree, tmp_path: Path) -> None:
    with pytest.raises(DynrouteError, match=r"checkpoint\['extra'\]\['when'\] holds a Payload"):
        checkpoint.save(tmp_path / "x.pt", tree, extra={"when": Payload(tmp_path / "m")})
    assert list(tmp_path.iterdir()) == []
