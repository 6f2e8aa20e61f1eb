"""grefel_jax.convert.safe_load: torch's file formats read without torch and without trust."""

from __future__ import annotations

import collections
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from grefel_jax.convert.safe_load import (  # noqa: E402
    CheckpointFormatError,
    InertObject,
    UnsafeCheckpointError,
    load_torch_checkpoint,
)


def _tensors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    return collections.OrderedDict(
        f32=torch.randn(3, 4, generator=g),
        f16=torch.randn(7, generator=g).half(),
        bf16=torch.randn(2, 3, generator=g).bfloat16(),
        f64=torch.randn(2, generator=g).double(),
        i64=torch.arange(5),
        boolean=torch.tensor([True, False, True]),
        scalar=torch.tensor(2.5),
        empty=torch.zeros(0, 3),
        transposed=base.t(),  # non-contiguous: strides (1, 5)
        offset_view=base[2:4, 1:],  # storage offset + strides
        shared=base,  # same storage as the two views above
        conv=torch.randn(4, 1, 3, 3, generator=g),
    )


def _assert_same(loaded, tensors):
    assert list(loaded) == list(tensors)
    for name, t in tensors.items():
        got = loaded[name]
        assert isinstance(got, np.ndarray), name
        assert got.shape == tuple(t.shape), name
        want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        np.testing.assert_array_equal(np.asarray(got, dtype=want.dtype), want, err_msg=name)
    assert str(loaded["bf16"].dtype) == "bfloat16"


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_round_trip_matches_torch(tmp_path, zip_format):
    tensors = _tensors()
    path = tmp_path / "sd.pth"
    torch.save(tensors, path, _use_new_zipfile_serialization=zip_format)
    _assert_same(load_torch_checkpoint(path), tensors)


class RecorderMeter:  # Stands in for POSTER++ main.py's class of the same name.
    def __init__(self, total_epoch):
        self.total_epoch = total_epoch
        self.current_epoch = 0
        self.epoch_losses = np.zeros((total_epoch, 2), dtype=np.float32)
        self.epoch_accuracy = np.ones((total_epoch, 2), dtype=np.float32)


class RecorderMeter1(RecorderMeter):
    pass


@pytest.fixture
def main_module_recorders(monkeypatch):
    """Makes pickle write `__main__.RecorderMeter(1)`, as POSTER++'s main.py does."""
    main = sys.modules["__main__"]
    for cls in (RecorderMeter, RecorderMeter1):
        monkeypatch.setattr(cls, "__module__", "__main__")
        monkeypatch.setattr(main, cls.__name__, cls, raising=False)


def _relocate_to_cuda(path):
    """Rewrites the storages' location tag 'cpu' -> 'cuda:0' (a GPU-saved file)."""
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    old, new = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
    assert old in entries[pkl]
    entries[pkl] = entries[pkl].replace(old, new)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, data in entries.items():
            z.writestr(n, data)


@pytest.mark.usefixtures("main_module_recorders")
def test_poster_checkpoint_with_recorders_and_cuda_tensors(tmp_path):
    sd = collections.OrderedDict(("module." + k, v) for k, v in _tensors().items())
    ckpt = {
        "epoch": 12,
        "state_dict": sd,
        "best_acc": torch.tensor(92.21),
        "recorder1": RecorderMeter1(200),
        "recorder": RecorderMeter(200),
    }
    path = tmp_path / "rafdb_best.pth"
    torch.save(ckpt, path)
    _relocate_to_cuda(path)
    # A plain torch.load refuses (the recorder class) or needs CUDA; ours reads it.
    with pytest.raises((RuntimeError, pickle.UnpicklingError)):
        torch.load(path, weights_only=True)

    loaded = load_torch_checkpoint(path)
    assert loaded["epoch"] == 12
    assert float(loaded["best_acc"]) == pytest.approx(92.21, abs=1e-4)
    _assert_same({k[7:]: v for k, v in loaded["state_dict"].items()}, _tensors())
    for name in ("recorder", "recorder1"):
        rec = loaded[name]
        assert isinstance(rec, InertObject) and not isinstance(rec, RecorderMeter)
        assert rec.state["total_epoch"] == 200
        np.testing.assert_array_equal(rec.state["epoch_accuracy"], np.ones((200, 2)))


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_reduce_is_refused_and_never_runs(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.ones(2)}, "x": _Evil(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match=r"system") as info:
        load_torch_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_builtin_eval_and_foreign_classes_are_refused(tmp_path):
    path = tmp_path / "eval.pth"
    torch.save({"x": _EvalEvil()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"(__builtin__|builtins)\.eval"):
        load_torch_checkpoint(path)
    # A whole pickled nn.Module is code, not weights: refused too.
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn"):
        load_torch_checkpoint(path)
    # A bare pickle (not a torch file) with a reduce payload: refused, not run.
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(_Evil(tmp_path / "pwned2"), protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        load_torch_checkpoint(path)
    assert not (tmp_path / "pwned2").exists()


class _ForgedTensor:
    """Pickles as a tensor record whose view reads past the end of its storage."""

    def __reduce__(self):
        return (
            torch._utils._rebuild_tensor_v2,
            (_STORAGE, 0, (1000,), (1,), False, collections.OrderedDict()),
        )


_STORAGE = object()


class _ForgingPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if obj is _STORAGE:
            return ("storage", torch.FloatStorage, "0", "cpu", 4)
        return None


def test_out_of_bounds_tensor_record_is_an_error(tmp_path):
    buf = __import__("io").BytesIO()
    _ForgingPickler(buf, protocol=2).dump({"w": _ForgedTensor()})
    path = tmp_path / "forged.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("forged/data.pkl", buf.getvalue())
        z.writestr("forged/data/0", np.zeros(4, np.float32).tobytes())
    with pytest.raises(CheckpointFormatError, match="reads element 999"):
        load_torch_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointFormatError, match="not a PyTorch checkpoint"):
        load_torch_checkpoint(path)
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "x")
    with pytest.raises(CheckpointFormatError, match="data.pkl"):
        load_torch_checkpoint(path)
    with pytest.raises(CheckpointFormatError, match="no such file"):
        load_torch_checkpoint(tmp_path / "missing.pth")


def test_convert_package_does_not_import_torch():
    code = (
        "import sys, grefel_jax.convert, grefel_jax.convert.safe_load; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)
