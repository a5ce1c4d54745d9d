"""score_sde_pytorch checkpoints loaded into scoresde's own DDPM++ / NCSN++ (:mod:`scoresde.nets.ncsnpp`).

The reference checkpoint (``checkpoint_*.pth``) is ``{"model": state_dict, "ema": {"decay", "num_updates",
"shadow_params"}, "optimizer": ..., "step": int}``. Its network keeps every layer in one flat list, ``all_modules``,
in the order its constructor appends them, and ``model`` was saved through ``DataParallel`` (keys
``module.all_modules.<i>.<name>``). ``shadow_params`` are the EMA weights as a *list*, in parameter order, of the
parameters that require gradients (all but the fixed Fourier frequencies ``W``).

The mapping walks scoresde's network in the reference's append order (:func:`reference_layers`), so layer ``i``
of the flat list is a layer of ours, and renames inside each layer:

    residual block  GroupNorm_0 → norm1, Conv_0 → conv1, Dense_0 → temb, GroupNorm_1 → norm2, Conv_1 → conv2,
                    Conv_2 or NIN_0 → skip
    attention       GroupNorm_0 → norm, NIN_0 | NIN_1 | NIN_2 (q, k, v) → qkv (stacked), NIN_3 → out
    resampling      Conv_0 or Conv2d_0 → conv;  combine: Conv → conv;  Fourier features: W → W

The attention layers and DDPM residual shortcuts use the reference's ``NIN`` layers (a ``W: (C_in, C_out)``
matrix and ``b``, ``y = x W + b`` per pixel): they load as 1×1 convolutions with weight ``Wᵀ``. The reference's VE
network divides its output by ``sigma`` and that is the score, ``s = h / sigma``, where scoresde's eps convention
is ``s = -net / sigma``: the last convolution is negated on loading, which makes the two equal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..nets.embeddings import GaussianFourierEmbedding
from ..nets.ncsnpp import NCSNpp, paper_config
from ..parametrization import ScoreModel
from ..sde import SDE, VESDE, VPSDE, SubVPSDE

__all__ = ["from_score_sde", "SCORE_SDE_CONFIGS", "reference_layers", "convert_state_dict", "read_score_sde"]

SCORE_SDE_CONFIGS: dict[str, tuple[str, Callable[[], SDE]]] = {
    "vp_ddpmpp_cont": ("ddpmpp_cont", lambda: VPSDE(0.1, 20.0)),
    "vp_ddpmpp_deep_cont": ("ddpmpp_deep_cont", lambda: VPSDE(0.1, 20.0)),
    "subvp_ddpmpp_cont": ("ddpmpp_cont", lambda: SubVPSDE(0.1, 20.0)),
    "subvp_ddpmpp_deep_cont": ("ddpmpp_deep_cont", lambda: SubVPSDE(0.1, 20.0)),
    "ve_ncsnpp_cont": ("ncsnpp_cont", lambda: VESDE(0.01, 50.0)),
    "ve_ncsnpp_deep_cont": ("ncsnpp_deep_cont", lambda: VESDE(0.01, 50.0)),
}
"""The paper's CIFAR-10 continuous-time configurations: network (:data:`scoresde.nets.PAPER_CONFIGS`) and SDE.
The reference's config files ``vp/cifar10_ddpmpp_continuous`` … ``ve/cifar10_ncsnpp_deep_continuous`` are accepted
as names too."""

_REFERENCE_NAMES = {
    f"{sde}/cifar10_{net}{'_deep' if deep else ''}_continuous": f"{sde}_{net}{'_deep' if deep else ''}_cont"
    for sde, net in (("vp", "ddpmpp"), ("subvp", "ddpmpp"), ("ve", "ncsnpp"))
    for deep in (False, True)
}

_RESBLOCK = {
    "GroupNorm_0": "norm1",
    "Conv_0": "conv1",
    "Dense_0": "temb",
    "GroupNorm_1": "norm2",
    "Conv_1": "conv2",
    "Conv_2": "skip",
    "NIN_0": "skip",
}
_RENAMES = {
    "resblock": _RESBLOCK,
    "attn": {"GroupNorm_0": "norm", "NIN_3": "out"},
    "resample": {"Conv_0": "conv", "Conv2d_0": "conv"},
    "combine": {"Conv": "conv"},
}


def reference_layers(net: NCSNpp) -> list[tuple[nn.Module | None, str]]:
    """Our layers in the reference's ``all_modules`` order, each with its kind (``None``: a reference layer without
    parameters, which takes an index there and has no counterpart here)."""
    biggan = net.resblock_type == "biggan"
    seq: list[tuple[nn.Module | None, str]] = []
    if isinstance(net.embed, GaussianFourierEmbedding):
        seq.append((net.embed, "fourier"))
    seq += [(net.temb[0], "plain"), (net.temb[2], "plain"), (net.conv_in, "plain")]
    for level, stage in enumerate(net.down):
        for i, block in enumerate(stage.blocks):
            seq.append((block, "resblock"))
            if net.attn_levels[level]:
                seq.append((stage.attn[i], "attn"))
        if level < net.levels - 1:
            seq.append((stage.downsample, "resblock" if biggan else "resample"))
            if net.progressive_input == "input_skip":
                seq += [(stage.pyramid_down, "resample"), (stage.combine, "combine")]
            elif net.progressive_input == "residual":
                seq.append((stage.pyramid_down, "resample"))
    seq += [(net.mid[0], "resblock"), (net.mid[1], "attn"), (net.mid[2], "resblock")]
    for i, stage in enumerate(net.up):
        level = net.levels - 1 - i
        seq += [(block, "resblock") for block in stage.blocks]
        if stage.attn is not None:
            seq.append((stage.attn, "attn"))
        if net.progressive == "output_skip":
            if level < net.levels - 1:
                seq.append((None, "pyramid upsampling"))
            seq += [(stage.pyramid[0], "plain"), (stage.pyramid[2], "plain")]
        elif net.progressive == "residual":
            top = level == net.levels - 1
            seq += [(stage.pyramid[0], "plain"), (stage.pyramid[2], "plain")] if top else [(stage.pyramid, "resample")]
        if level > 0:
            seq.append((stage.upsample, "resblock" if biggan else "resample"))
    if net.progressive != "output_skip":
        seq += [(net.conv_out[0], "plain"), (net.conv_out[2], "plain")]
    return seq


def _nin_as_conv(W: Tensor) -> Tensor:
    """A reference ``NIN`` matrix ``W: (C_in, C_out)`` as a 1×1 convolution weight ``(C_out, C_in, 1, 1)``."""
    return W.t()[:, :, None, None].contiguous()


def convert_state_dict(reference: dict[str, Tensor], net: NCSNpp) -> dict[str, Tensor]:
    """A reference state dict (``all_modules.<i>.…``, ``module.`` prefix allowed) as ``net``'s state dict."""
    layers, names = reference_layers(net), {id(m): n for n, m in net.named_modules()}
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in reference.items():
        parts = key.removeprefix("module.").split(".")
        if parts[0] != "all_modules" or len(parts) < 3 or not parts[1].isdigit():
            raise ValueError(f"{key!r} is not a score_sde_pytorch NCSN++ key (all_modules.<i>.<name>)")
        i, sub, leaf = int(parts[1]), parts[2:-1], parts[-1]
        if i >= len(layers) or layers[i][0] is None:
            raise ValueError(
                f"{key!r} has no layer here: the checkpoint does not match this configuration ({len(layers)} layers)"
            )
        module, kind = layers[i]
        prefix = names[id(module)]
        if kind == "attn" and sub and sub[0] in ("NIN_0", "NIN_1", "NIN_2"):
            qkv.setdefault(prefix, {})[f"{sub[0]}.{leaf}"] = value
            continue
        renamed = [_RENAMES[kind].get(s, s) for s in sub] if kind in _RENAMES else sub
        if leaf in ("W", "b") and sub and sub[-1].startswith("NIN"):
            leaf, value = ("weight", _nin_as_conv(value)) if leaf == "W" else ("bias", value)
        out[".".join(filter(None, [prefix, *renamed, leaf]))] = value
    for prefix, parts_ in qkv.items():
        try:
            out[f"{prefix}.qkv.weight"] = torch.cat([_nin_as_conv(parts_[f"NIN_{k}.W"]) for k in range(3)])
            out[f"{prefix}.qkv.bias"] = torch.cat([parts_[f"NIN_{k}.b"] for k in range(3)])
        except KeyError as err:
            raise ValueError(f"attention layer {prefix} lacks {err.args[0]} in the checkpoint") from err
    return out


def _ema_state(model_sd: dict[str, Tensor], ema: dict[str, Any]) -> dict[str, Tensor]:
    """The reference's EMA list put back under the model's keys: every key but the Fourier frequencies, in order."""
    shadow = ema.get("shadow_params")
    keys = [k for k in model_sd if not k.removeprefix("module.").startswith("all_modules.0.W")]
    if not isinstance(shadow, (list, tuple)) or len(shadow) != len(keys):
        n = len(shadow) if isinstance(shadow, (list, tuple)) else "no"
        raise ValueError(
            f"the checkpoint's ema holds {n} shadow parameters, the network has {len(keys)} trainable ones"
        )
    state = dict(model_sd)
    for k, s in zip(keys, shadow):
        if tuple(s.shape) != tuple(model_sd[k].shape):
            raise ValueError(f"ema entry for {k} has shape {tuple(s.shape)}, the parameter {tuple(model_sd[k].shape)}")
        state[k] = s
    return state


def read_score_sde(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of a score_sde_pytorch ``.pth`` file, read with ``weights_only=True`` (tensors and plain
    containers only: nothing in the file is executed)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds here
        raise ValueError(f"{p} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{p} is not a score_sde_pytorch checkpoint (a dict with 'model', 'ema', 'step')")
    return ckpt


def resolve_config(config: str) -> str:
    """A configuration name of :data:`SCORE_SDE_CONFIGS`, or the reference's config file it names."""
    name = Path(config).with_suffix("").as_posix().removeprefix("configs/")
    name = _REFERENCE_NAMES.get(name, name)
    if name not in SCORE_SDE_CONFIGS:
        raise ValueError(
            f"unknown score_sde config {config!r}; available: {', '.join(SCORE_SDE_CONFIGS)} (or the reference's "
            "vp/cifar10_ddpmpp_continuous, …)"
        )
    return name


def from_score_sde(path: str | Path, config: str, *, ema: bool = True, **overrides: Any) -> ScoreModel:
    """A :class:`~scoresde.ScoreModel` with scoresde's DDPM++ / NCSN++ holding a score_sde_pytorch checkpoint.

    Args:
        path: the reference's ``checkpoint_*.pth``.
        config: which paper configuration trained it (:data:`SCORE_SDE_CONFIGS`: ``vp_ddpmpp_cont``, …, or the
            reference's ``vp/cifar10_ddpmpp_continuous``, …): the weights do not say which SDE they were trained on.
        ema: load the EMA weights (default, as the paper samples) instead of the raw ones.
        overrides: network arguments changed from the paper's (e.g. ``nf=64`` for a run trained with a narrower
            network); see :class:`~scoresde.nets.NCSNpp`.
    """
    name = resolve_config(config)
    net_name, make_sde = SCORE_SDE_CONFIGS[name]
    ckpt = read_score_sde(path)
    model_sd = ckpt["model"]
    if ema:
        if "ema" not in ckpt:
            raise ValueError(f"{path} holds no 'ema' entry; pass ema=False for the raw weights")
        model_sd = _ema_state(model_sd, ckpt["ema"])
    net = paper_config(net_name, **overrides)
    state = convert_state_dict(model_sd, net)
    sde = make_sde()
    if isinstance(sde, VESDE):  # s = h / sigma there, s = -net / sigma here
        for k in ("conv_out.2.weight", "conv_out.2.bias"):
            state[k] = -state[k]
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that do not fit
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)
        raise ValueError(f"{path} does not fit {name}: {first}") from err
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {name}: missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}"
        )
    return ScoreModel(net, sde, prediction="eps").eval()
