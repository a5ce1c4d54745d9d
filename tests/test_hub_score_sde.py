"""score_sde_pytorch checkpoints: a state dict in the reference's exact format loads into scoresde's DDPM++ / NCSN++.

The reference format is written out here from the reference's model code (its constructor's append order, the
parameter names and shapes of each layer, the ``module.`` prefix of DataParallel, the EMA weights as a list in
parameter order without the fixed Fourier frequencies), independently of the mapping in ``scoresde.hub``, which
walks scoresde's own network instead.
"""

import math

import pytest
import torch

from scoresde import VESDE
from scoresde.hub import from_score_sde
from scoresde.hub.score_sde import convert_state_dict
from scoresde.nets import paper_config

SMALL = {"nf": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "image_size": 8, "attn_resolutions": (4,)}
PAPER = {"nf": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 4, "image_size": 32, "attn_resolutions": (16,)}


def reference_keys(nf, ch_mult, num_res_blocks, image_size, attn_resolutions, ncsnpp, channels=3):
    """``[(key, shape)]`` of the reference NCSN++ class for a paper configuration (DDPM++: positional embedding, no
    pyramid; NCSN++: Fourier features and a residual input pyramid), in state-dict order."""
    layers = []

    def named(prefix, entries):
        return [(f"{prefix}.{n}", s) for n, s in entries]

    def dense(i, o):
        return [("weight", (o, i)), ("bias", (o,))]

    def conv(i, o, k):
        return [("weight", (o, i, k, k)), ("bias", (o,))]

    def norm(c):
        return [("weight", (c,)), ("bias", (c,))]

    def resblock(i, o, resample=False):
        p = named("GroupNorm_0", norm(i)) + named("Conv_0", conv(i, o, 3)) + named("Dense_0", dense(4 * nf, o))
        p += named("GroupNorm_1", norm(o)) + named("Conv_1", conv(o, o, 3))
        return p + (named("Conv_2", conv(i, o, 1)) if i != o or resample else [])

    def attention(c):
        return named("GroupNorm_0", norm(c)) + sum(
            (named(f"NIN_{k}", [("W", (c, c)), ("b", (c,))]) for k in range(4)), []
        )

    if ncsnpp:
        layers.append([("W", (nf,))])
    layers += [dense(2 * nf if ncsnpp else nf, 4 * nf), dense(4 * nf, 4 * nf), conv(channels, nf, 3)]
    resolutions = [image_size // 2**i for i in range(len(ch_mult))]
    hs, c, pyramid = [nf], nf, channels
    for level, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            layers.append(resblock(c, nf * mult))
            c = nf * mult
            if resolutions[level] in attn_resolutions:
                layers.append(attention(c))
            hs.append(c)
        if level != len(ch_mult) - 1:
            layers.append(resblock(c, c, resample=True))
            if ncsnpp:  # progressive_input = residual: a FIR conv downsampling the input pyramid
                layers.append(named("Conv2d_0", conv(pyramid, c, 3)))
                pyramid = c
            hs.append(c)
    layers += [resblock(c, c), attention(c), resblock(c, c)]
    for level in reversed(range(len(ch_mult))):
        for _ in range(num_res_blocks + 1):
            layers.append(resblock(c + hs.pop(), nf * ch_mult[level]))
            c = nf * ch_mult[level]
        if resolutions[level] in attn_resolutions:
            layers.append(attention(c))
        if level != 0:
            layers.append(resblock(c, c, resample=True))
    layers += [norm(c), conv(c, channels, 3)]
    return [(f"module.all_modules.{i}.{n}", s) for i, entries in enumerate(layers) for n, s in entries]


def reference_checkpoint(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = {k: torch.randn(s, generator=g) * 0.1 for k, s in keys}
    shadow = [torch.randn(s, generator=g) * 0.1 for k, s in keys if not k.endswith("all_modules.0.W")]
    return {"model": model, "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": shadow},
            "optimizer": {"state": {}, "param_groups": []}, "step": 7}


def _config(name):
    return ("ve_ncsnpp_cont", True) if name == "ncsnpp" else ("vp_ddpmpp_cont", False)


def _load(tmp_path, ckpt, config, overrides, **kw):
    path = tmp_path / "checkpoint_7.pth"
    torch.save(ckpt, path)
    return from_score_sde(path, config, **overrides, **kw)


@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp"])
def test_reference_format_loads_every_tensor(tmp_path, name):
    config, ncsnpp = _config(name)
    keys = reference_keys(**SMALL, ncsnpp=ncsnpp)
    ckpt = reference_checkpoint(keys)
    model = _load(tmp_path, ckpt, config, SMALL, ema=False)
    ours = model.net.state_dict()
    n_ref = sum(math.prod(s) for _, s in keys)
    assert sum(v.numel() for v in ours.values() if v.is_floating_point()) == n_ref  # nothing left out or made up
    # the raw weights (ema=False): a residual block's first conv and the last layer, by the reference's index
    first_block = f"module.all_modules.{4 if ncsnpp else 3}"
    assert torch.equal(ours["down.0.blocks.0.conv1.weight"], ckpt["model"][f"{first_block}.Conv_0.weight"])
    last = keys[-1][0]
    sign = -1 if ncsnpp else 1  # VE: s = h / sigma in the reference, -net / sigma here
    assert torch.equal(ours["conv_out.2.bias"], sign * ckpt["model"][last])


@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp"])
def test_each_ema_entry_lands_in_its_own_tensor(tmp_path, name):
    """Perturbing one entry of the EMA list changes exactly the parameter it belongs to (attention q, k, v: their
    slice of the stacked qkv weight), and the EMA values, not the raw ones, are loaded by default."""
    config, ncsnpp = _config(name)
    keys = reference_keys(**SMALL, ncsnpp=ncsnpp)
    ema_keys = [k for k, _ in keys if not k.endswith("all_modules.0.W")]
    ckpt = reference_checkpoint(keys)
    base = {k: v.clone() for k, v in _load(tmp_path, ckpt, config, SMALL).net.state_dict().items()}
    assert torch.equal(base["temb.0.weight"], ckpt["ema"]["shadow_params"][0])  # W is not in the list
    probes = [i for i, k in enumerate(ema_keys) if k.endswith(("NIN_1.W", "Conv_2.weight", "Dense_0.bias"))][:3]
    probes += [len(ema_keys) - 1]
    for i in probes:
        bumped = reference_checkpoint(keys)
        bumped["ema"]["shadow_params"][i] = bumped["ema"]["shadow_params"][i] + 1.0
        after = _load(tmp_path, bumped, config, SMALL).net.state_dict()
        changed = [k for k in base if not torch.equal(base[k], after[k])]
        assert len(changed) == 1, (ema_keys[i], changed)
        diff = after[changed[0]] - base[changed[0]]
        if ema_keys[i].endswith("NIN_1.W"):  # k of the stacked q, k, v
            assert changed[0].endswith("qkv.weight")
            c = diff.shape[1]
            assert torch.allclose(diff[c : 2 * c], torch.ones_like(diff[c : 2 * c]))
            assert not diff[:c].any() and not diff[2 * c :].any()
        else:
            sign = -1.0 if (ncsnpp and i == len(ema_keys) - 1) else 1.0
            assert torch.allclose(diff, torch.full_like(diff, sign)), ema_keys[i]


def test_nin_attention_loads_as_the_reference_computes_it():
    """The reference's attention in formulas: q, k, v = NIN_0..2(GroupNorm(x)), w = softmax(q·k / √C) over
    positions, h = NIN_3(w v), (x + h)/√2; a NIN layer is y = x W + b per pixel."""
    keys = reference_keys(**SMALL, ncsnpp=False)
    ckpt = reference_checkpoint(keys)
    net = paper_config("ddpmpp_cont", **SMALL)
    net.load_state_dict(convert_state_dict(ckpt["model"], net))
    idx = next(k for k, _ in keys if k.endswith("NIN_0.W")).split(".")[2]
    p = {k.split(f"all_modules.{idx}.")[1]: v for k, v in ckpt["model"].items() if f"all_modules.{idx}." in k}
    C = p["GroupNorm_0.weight"].numel()
    x = torch.randn(2, C, 4, 4, generator=torch.Generator().manual_seed(3))
    h = torch.nn.functional.group_norm(x, min(C // 4, 32), p["GroupNorm_0.weight"], p["GroupNorm_0.bias"], eps=1e-6)

    def nin(z, k):
        return torch.einsum("bchw,cd->bdhw", z, p[f"NIN_{k}.W"]) + p[f"NIN_{k}.b"][None, :, None, None]

    q, k_, v = nin(h, 0), nin(h, 1), nin(h, 2)
    w = torch.einsum("bchw,bcij->bhwij", q, k_).reshape(2, 4, 4, 16).mul(C**-0.5).softmax(-1).reshape(2, 4, 4, 4, 4)
    want = (x + nin(torch.einsum("bhwij,bcij->bchw", w, v), 3)) / math.sqrt(2)
    got = net.down[1].attn[0](x)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def test_ve_score_is_the_reference_output_over_sigma(tmp_path):
    """The reference's VE network returns h / sigma as the score; the loaded model gives the same score."""
    keys = reference_keys(**SMALL, ncsnpp=True)
    ckpt = reference_checkpoint(keys)
    model = _load(tmp_path, ckpt, "ve/cifar10_ncsnpp_continuous", SMALL, ema=False)
    assert isinstance(model.sde, VESDE) and (model.sde.sigma_min, model.sde.sigma_max) == (0.01, 50.0)
    plain = paper_config("ncsnpp_cont", **SMALL)
    plain.load_state_dict(convert_state_dict(ckpt["model"], plain))  # the reference's sign
    plain.eval()
    x, t = torch.rand(3, 3, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    sigma = model.sde.sigma(t)
    with torch.no_grad():
        want = plain(x, sigma.log()) / sigma[:, None, None, None]
        assert torch.allclose(model(x, t), want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp"])
def test_paper_size_checkpoints_load(tmp_path, name):
    config, ncsnpp = _config(name)
    keys = reference_keys(**PAPER, ncsnpp=ncsnpp)
    model = _load(tmp_path, reference_checkpoint(keys), config, {})
    assert sum(p.numel() for p in model.net.parameters()) == sum(math.prod(s) for _, s in keys) - (128 if ncsnpp else 0)


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda c: c["ema"]["shadow_params"].pop(), "shadow parameters"),
    (lambda c: c["model"].pop(next(iter(c["model"]))), "does not fit|shadow"),
    (lambda c: c.pop("model"), "not a score_sde_pytorch checkpoint"),
])
def test_malformed_checkpoints_are_explained(tmp_path, mutate, match):
    ckpt = reference_checkpoint(reference_keys(**SMALL, ncsnpp=False))
    mutate(ckpt)
    with pytest.raises(ValueError, match=match):
        _load(tmp_path, ckpt, "vp_ddpmpp_cont", SMALL)


def test_unknown_config_is_explained(tmp_path):
    with pytest.raises(ValueError, match="available: vp_ddpmpp_cont"):
        from_score_sde(tmp_path / "x.pth", "cifar10_ddpm")
