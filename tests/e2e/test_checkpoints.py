"""experiments.common checkpoints and atomic writes: damaged, foreign and half-written files are
detected, reported and recomputed, and a failed run leaves no stale results."""

import json
import logging
import os

import numpy as np
import pytest

from experiments import common

FINGERPRINT = {"model": {"widths": [4]}, "seed": 0}


def _state():
    return {"params": {"w": np.arange(12.0).reshape(3, 4), "b": np.ones(4, np.float32)}}


def damage_file(path: str, how: str) -> None:
    """Damage the file at `path` in place: truncated, header_only, bit_flip,
    not_a_checkpoint or foreign (a checkpoint header naming another config)."""
    raw = open(path, "rb").read()
    if how == "truncated":
        raw = raw[: len(raw) - 7]
    elif how == "header_only":
        raw = raw[: raw.index(b"\n") // 2]
    elif how == "bit_flip":
        raw = raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:]
    elif how == "not_a_checkpoint":
        raw = b"\x93\x00 not a checkpoint"
    elif how == "foreign":  # intact, but written under another config's fingerprint
        header, _, body = raw.partition(b"\n")
        header = json.loads(header) | {"fingerprint": "another config's hash"}
        raw = json.dumps(header).encode() + b"\n" + body
    with open(path, "wb") as f:
        f.write(raw)


def test_checkpoint_round_trip(tmp_path):
    path = str(tmp_path / "sub" / "a.ckpt")
    common.save_checkpoint(path, FINGERPRINT, _state(), {"history": [[0, 1.5]]})
    state, meta = common.load_checkpoint(path, dict(FINGERPRINT), _state())
    np.testing.assert_array_equal(state["params"]["w"], _state()["params"]["w"])
    assert state["params"]["b"].dtype == np.float32 and meta == {"history": [[0, 1.5]]}
    assert os.listdir(tmp_path / "sub") == ["a.ckpt"]  # no temporary file left behind
    assert common.load_checkpoint(str(tmp_path / "absent.ckpt"), FINGERPRINT, _state()) is None


@pytest.mark.parametrize("how", ["truncated", "header_only", "bit_flip", "not_a_checkpoint"])
def test_damaged_checkpoint_is_reported_not_raised(tmp_path, caplog, how):
    path = str(tmp_path / "a.ckpt")
    common.save_checkpoint(path, FINGERPRINT, _state(), {})
    damage_file(path, how)
    with caplog.at_level(logging.WARNING):
        assert common.load_checkpoint(path, FINGERPRINT, _state()) is None
    assert any(path in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_foreign_or_mismatched_checkpoint_is_reported(tmp_path, caplog):
    path = str(tmp_path / "a.ckpt")
    common.save_checkpoint(path, FINGERPRINT, _state(), {})
    with caplog.at_level(logging.WARNING):
        assert common.load_checkpoint(path, FINGERPRINT | {"seed": 1}, _state()) is None
        assert common.load_checkpoint(path, FINGERPRINT, {"other": np.zeros(2)}) is None
    messages = [r.getMessage() for r in caplog.records if path in r.getMessage()]
    assert len(messages) == 2 and "another config" in messages[0]


def test_checkpoint_of_another_state_version_is_reported_and_recomputed(tmp_path, caplog):
    """A file of an older state version (or of none: written before versions were recorded)
    is not loaded: a warning names the file and both versions, and the caller recomputes;
    the same version loads."""
    old, unversioned = str(tmp_path / "old.ckpt"), str(tmp_path / "none.ckpt")
    common.save_checkpoint(old, FINGERPRINT, _state(), {}, version=1)
    common.save_checkpoint(unversioned, FINGERPRINT, _state(), {})
    with caplog.at_level(logging.WARNING):
        assert common.load_checkpoint(old, FINGERPRINT, _state(), version=2) is None
        assert common.load_checkpoint(unversioned, FINGERPRINT, _state(), version=2) is None
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2
    assert old in messages[0] and "version 1" in messages[0] and "version 2" in messages[0]
    assert unversioned in messages[1] and "version None" in messages[1]
    state, _ = common.load_checkpoint(old, FINGERPRINT, _state(), version=1)
    np.testing.assert_array_equal(state["params"]["w"], _state()["params"]["w"])
    header = json.loads(open(old, "rb").read().partition(b"\n")[0])
    assert header["version"] == 1


def test_sharded_state_round_trips_onto_its_shardings(tmp_path):
    """FSDP-split params (fsdp:2,data:2 on the suite's 4 devices) are written whole and come
    back with the target's shardings, whatever the target's values; host leaves stay host."""
    from hessjax import distributed

    mesh = distributed.parse_mesh("fsdp:2,data:2")
    state = {"params": distributed.shard_params(_state()["params"], mesh), "log": np.arange(3)}
    path = str(tmp_path / "s.ckpt")
    common.save_checkpoint(path, FINGERPRINT, state, {})
    target = {"params": distributed.shard_params({"w": np.zeros((3, 4)), "b": np.zeros(4)}, mesh),
              "log": np.zeros(3, int)}  # fmt: skip
    restored, _ = common.load_checkpoint(path, FINGERPRINT, target)
    for name in ("w", "b"):
        got, want = restored["params"][name], target["params"][name]
        assert got.sharding == want.sharding and "fsdp" in str(got.sharding.spec)
        np.testing.assert_array_equal(np.asarray(got), _state()["params"][name])
    assert isinstance(restored["log"], np.ndarray) and restored["log"].tolist() == [0, 1, 2]


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "results.json")
    common.write_json(path, {"run": 1})

    def fail(f):
        f.write(b'{"run": 2, "trunc')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        common.write_atomic(path, fail)
    assert json.load(open(path)) == {"run": 1} and os.listdir(tmp_path) == ["results.json"]
