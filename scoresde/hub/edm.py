"""EDM network pickles (``network-snapshot-*.pkl``) read without running any code from the file.

EDM saves its networks with its ``torch_utils.persistence`` module: each network class travels as *source code*
inside the pickle and is rebuilt on loading by executing that source. :func:`read_edm` instead unpickles with an
allow-list: tensors and parameters (their storages read with ``torch.load(weights_only=True)``), plain containers,
and EDM's persistent objects recorded as :class:`EDMObject` (class name, constructor arguments, sub-modules,
tensors) with their source kept as text and never executed. Any other global in the file is refused.

What this gives: every tensor of the snapshot's networks (``ema``, ``augment_pipe``) under its module path, and the
class names and constructor arguments (``EDMPrecond(img_resolution=32, ..., model_type='SongUNet')``). What it does
not give: a runnable network. EDM's ``SongUNet`` / ``DhariwalUNet`` are other implementations of DDPM++ / NCSN++ /
ADM (their own layer order, key names, attention layout, resampling filters and embeddings); scoresde has no copy
of their numerics to put those tensors into, and the only description of them inside the pickle is code that would
have to be executed. :func:`from_edm` therefore says so in one line after reading the file.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor

__all__ = ["EDMObject", "EDMSnapshot", "read_edm", "from_edm"]


@dataclass
class EDMObject:
    """One of EDM's persistent objects, as data: its class, constructor arguments and pickled state."""

    class_name: str
    module_src: str = field(repr=False)
    state: dict[str, Any] = field(repr=False)

    @property
    def init_kwargs(self) -> dict[str, Any]:
        kwargs = self.state.get("_init_kwargs", {})
        return dict(kwargs) if isinstance(kwargs, dict) else {}

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """Parameters and buffers of this module and its sub-modules, by dotted path (as ``state_dict`` names them)."""
        return _tensors(self.state, prefix)


def _tensors(state: dict[str, Any], prefix: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if isinstance(t, Tensor):
                out[prefix + name] = t
    for name, sub in (state.get("_modules") or {}).items():
        if isinstance(sub, (EDMObject, _Record)):
            out.update(sub.tensors(f"{prefix}{name}."))
    return out


class _Record:
    """A plain torch container (``nn.ModuleDict``, ``nn.ModuleList``, ...) kept as its state, not constructed: the
    unpickler gives each allowed container name a subclass of this, which pickle creates without ``__init__``."""

    state: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}

    @property
    def class_name(self) -> str:
        return type(self).__name__

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        return _tensors(getattr(self, "state", {}), prefix)


@dataclass
class EDMSnapshot:
    """The readable content of an EDM snapshot: its networks as :class:`EDMObject` and any plain-data entries."""

    networks: dict[str, EDMObject]
    other: dict[str, Any]

    def tensors(self, key: str = "ema") -> dict[str, Tensor]:
        """Every tensor of network ``key`` (``ema``: the weights EDM samples with)."""
        if key not in self.networks:
            raise KeyError(f"the snapshot has no network {key!r}; it has {', '.join(self.networks) or 'none'}")
        return self.networks[key].tensors()


class _Refused(pickle.UnpicklingError):
    """A global outside the allow-list, or a malformed EDM object."""


def _load_storage(b: bytes) -> Any:
    return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)


def _persistent(meta: dict[str, Any]) -> EDMObject:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise _Refused("an EDM persistent object without class metadata")
    return EDMObject(str(meta.get("class_name")), str(meta.get("module_src", "")), meta.get("state") or {})


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
    ("torch", "Size"): torch.Size,
}
_CONTAINERS = {
    name: type(name, (_Record,), {})
    for name in ("ModuleDict", "ModuleList", "Sequential", "Identity", "SiLU", "ReLU", "Dropout", "ParameterDict")
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module.startswith("torch.nn.modules.") and name in _CONTAINERS:
            return _CONTAINERS[name]
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)
        raise _Refused(
            f"the file asks for {module}.{name}, which is neither a tensor, a plain container nor an EDM network; "
            "it was refused (nothing from the file is executed)"
        )


def read_edm(path: str | Path) -> EDMSnapshot:
    """The networks and data of an EDM ``network-snapshot-*.pkl``, read without executing anything in it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such EDM snapshot")
    try:
        with p.open("rb") as f:
            data = _SafeUnpickler(f).load()
    except _Refused as err:
        raise ValueError(f"{p}: {err}") from err
    except Exception as err:  # a truncated file, or not a pickle at all
        raise ValueError(f"{p} is not a readable EDM snapshot ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{p} is not an EDM snapshot (a dict with 'ema'), got {type(data).__name__}")
    networks = {k: v for k, v in data.items() if isinstance(v, EDMObject)}
    return EDMSnapshot(networks, {k: v for k, v in data.items() if k not in networks})


def from_edm(path: str | Path) -> NoReturn:
    """Refuses in one line, after reading the snapshot safely: EDM networks cannot be rebuilt from tensors alone
    (module docstring). :func:`read_edm` gives their tensors and constructor arguments."""
    snap = read_edm(path)
    net = snap.networks.get("ema")
    if net is None:
        raise ValueError(f"{path} holds no 'ema' network (it has {', '.join(snap.networks) or 'none'})")
    inner = net.init_kwargs.get("model_type", "?")
    raise ValueError(
        f"{path}: EDM's {net.class_name} ({inner}, {len(snap.tensors())} tensors) cannot be rebuilt from tensors "
        "alone: the pickle describes its layers only as source code, which scoresde does not execute, and scoresde "
        "has no copy of EDM's networks; scoresde.hub.read_edm(path) gives the tensors and constructor arguments"
    )
