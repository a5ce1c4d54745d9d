"""EDM snapshots are read with an allow-list: tensors come out, the code inside the file never runs."""

import os
import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch

from scoresde.hub.edm import from_edm, read_edm


class _Persistent:
    """Pickles as EDM's persistence module pickles its networks: ``_reconstruct_persistent_obj(meta)`` with the
    class's source code in ``meta['module_src']``."""

    def __init__(self, reconstruct, class_name, src, params=None, modules=None, init_kwargs=None):
        self.reconstruct, self.class_name, self.src = reconstruct, class_name, src
        self.params, self.modules, self.init_kwargs = params or {}, modules or {}, init_kwargs or {}

    def __reduce__(self):
        state = {"training": False, "_parameters": OrderedDict(self.params), "_buffers": OrderedDict(),
                 "_modules": OrderedDict(self.modules), "_init_args": (), "_init_kwargs": self.init_kwargs}
        meta = {"type": "class", "version": 6, "module_src": self.src, "class_name": self.class_name, "state": state}
        return (self.reconstruct, (meta,))


@pytest.fixture
def snapshot(tmp_path, monkeypatch):
    """A snapshot shaped like EDM's (EDMPrecond → SongUNet → ModuleDict → Conv2d), whose class source would
    create a file if it were ever executed."""
    canary = tmp_path / "executed"
    src = f"import pathlib\npathlib.Path({str(canary)!r}).touch()\n"
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what EDM would run: exec(meta['module_src'])
        exec(meta["module_src"])

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)
    g = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=g))
    bias = torch.nn.Parameter(torch.randn(8, generator=g))
    conv = _Persistent(_reconstruct_persistent_obj, "Conv2d", src, params={"weight": weight, "bias": bias})
    enc = torch.nn.ModuleDict()
    enc._modules["32x32_conv"] = conv  # EDM's own layers inside a torch container
    unet = _Persistent(_reconstruct_persistent_obj, "SongUNet", src, modules={"enc": enc},
                       params={"map_noise.freqs": torch.arange(4.0)})
    net = _Persistent(_reconstruct_persistent_obj, "EDMPrecond", src, modules={"model": unet},
                      init_kwargs={"img_resolution": 32, "model_type": "SongUNet", "sigma_data": 0.5})
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(pickle.dumps({"ema": net, "augment_pipe": None, "dataset_kwargs": {"resolution": 32}}))
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")  # reading must not need EDM's code
    monkeypatch.delitem(sys.modules, "torch_utils")
    return path, canary, {"model.enc.32x32_conv.weight": weight, "model.enc.32x32_conv.bias": bias}


def test_tensors_come_out_and_no_code_runs(snapshot):
    path, canary, want = snapshot
    snap = read_edm(path)
    assert not canary.exists()
    assert "torch_utils" not in sys.modules
    tensors = snap.tensors("ema")
    for k, v in want.items():
        assert torch.equal(tensors[k], v.detach()), k
    assert torch.equal(tensors["model.map_noise.freqs"], torch.arange(4.0))
    ema = snap.networks["ema"]
    assert ema.class_name == "EDMPrecond" and ema.init_kwargs["model_type"] == "SongUNet"
    assert snap.other["dataset_kwargs"] == {"resolution": 32}


def test_from_edm_says_in_one_line_why_it_cannot_rebuild(snapshot):
    path, canary, _ = snapshot
    with pytest.raises(ValueError, match="EDMPrecond \\(SongUNet, 3 tensors\\) cannot be rebuilt") as info:
        from_edm(path)
    assert "\n" not in str(info.value) and not canary.exists()


class _Evil:
    def __init__(self, canary):
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    canary = tmp_path / "pwned"
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(pickle.dumps({"ema": _Evil(canary)}))
    with pytest.raises(ValueError, match="system, which is neither a tensor.*refused"):
        read_edm(path)
    assert not canary.exists()


def test_not_a_pickle_is_explained(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable EDM snapshot"):
        read_edm(path)
