"""DDPM++ / NCSN++: parameter counts of the paper's CIFAR-10 networks, FIR resampling identities, and a
forward/backward pass of every configuration at reduced width."""

import pytest
import torch
import torch.nn.functional as F

from scoresde import VESDE, VPSDE, DSMLoss, ScoreModel
from scoresde.nets import DDPMpp, NCSNpp, count_parameters, paper_config
from scoresde.nets.layers import FIRConv2d, downsample_2d, fir_kernel_2d, upsample_2d

# Trainable parameters of the score SDE paper's CIFAR-10 networks. The layer shapes follow the reference
# implementation block by block (its NCSN++ also stores the 128 fixed Fourier frequencies as a non-trainable
# parameter; here they are a buffer). The figures quoted for these networks, rounded to 0.1 M, are the second column.
PAPER_COUNTS = {
    "ddpmpp_cont": (61_804_419, 61.8),
    "ddpmpp_deep_cont": (106_632_579, 106.6),
    "ncsnpp_cont": (62_758_787, 62.8),
    "ncsnpp_deep_cont": (107_586_947, 107.6),
}


@pytest.mark.parametrize("name", list(PAPER_COUNTS))
def test_paper_networks_have_the_published_parameter_counts(name):
    exact, published_millions = PAPER_COUNTS[name]
    n = count_parameters(paper_config(name))
    assert n == exact
    assert round(n / 1e6, 1) == published_millions


def test_deep_variants_add_exactly_four_residual_blocks_per_level():
    # Each extra down block at level l maps c_l → c_l and each extra up block (c_l + c_l) → c_l; the difference of the
    # counts is therefore a sum of per-block sizes, an independent check of the construction.
    nf, temb = 128, 512
    chans = [nf * m for m in (1, 2, 2, 2)]

    def block(c_in, c_out):
        gn = 2 * c_in + 2 * c_out
        conv = 9 * c_in * c_out + c_out + 9 * c_out * c_out + c_out
        skip = c_in * c_out + c_out if c_in != c_out else 0
        return gn + conv + temb * c_out + c_out + skip

    def attn(c):
        return 2 * c + 4 * (c * c + c)

    extra = sum(4 * (block(c, c) + block(2 * c, c)) for c in chans) + 4 * attn(chans[1])  # 4 more attention at 16×16
    for base, deep in (("ddpmpp_cont", "ddpmpp_deep_cont"), ("ncsnpp_cont", "ncsnpp_deep_cont")):
        assert PAPER_COUNTS[deep][0] - PAPER_COUNTS[base][0] == extra


# ---- FIR resampling ----------------------------------------------------------------------------------------------
def test_fir_with_a_box_kernel_is_nearest_upsampling_and_average_pooling():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    box = fir_kernel_2d([1, 1])
    torch.testing.assert_close(upsample_2d(x, box), F.interpolate(x, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(downsample_2d(x, box), F.avg_pool2d(x, 2))


def test_fir_resampling_keeps_constants_and_has_unit_gain():
    k = fir_kernel_2d([1, 3, 3, 1])
    c = torch.full((1, 2, 16, 16), 3.0)
    torch.testing.assert_close(upsample_2d(c, k)[..., 2:-2, 2:-2], torch.full((1, 2, 28, 28), 3.0))
    torch.testing.assert_close(downsample_2d(c, k)[..., 1:-1, 1:-1], torch.full((1, 2, 6, 6), 3.0))


@pytest.mark.parametrize("up", [True, False], ids=["up", "down"])
def test_fused_fir_convolution_with_an_identity_kernel_is_plain_fir_resampling(up):
    conv = FIRConv2d(3, 3, [1, 3, 3, 1], up=up, down=not up)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = torch.eye(3)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    k = fir_kernel_2d([1, 3, 3, 1])
    torch.testing.assert_close(conv(x), upsample_2d(x, k) if up else downsample_2d(x, k))


# ---- every configuration runs forward and backward at reduced width ---------------------------------------------
SMALL = {"nf": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "image_size": 16, "attn_resolutions": (8,)}
VARIANTS = {
    "ddpmpp": (DDPMpp, {}),
    "ncsnpp": (NCSNpp, {}),
    "ddpm_blocks_output_skip": (NCSNpp, {"resblock_type": "ddpm", "progressive": "output_skip",
                                         "progressive_input": "input_skip"}),
    "ddpm_blocks_no_fir_residual_cat": (NCSNpp, {"resblock_type": "ddpm", "fir": False, "progressive": "residual",
                                                 "progressive_input": "input_skip", "progressive_combine": "cat"}),
    "biggan_residual_out": (DDPMpp, {"progressive": "residual", "embedding": "fourier", "centered": False}),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_trains_one_step_at_reduced_width(name):
    cls, kwargs = VARIANTS[name]
    torch.manual_seed(0)
    net = cls(**{**SMALL, **kwargs})
    sde = VESDE(sigma_max=50.0) if net.embed.__class__.__name__.startswith("Gaussian") else VPSDE()
    model = ScoreModel(net, sde)
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    loss = DSMLoss()(model, sde, x0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert torch.isfinite(loss) and 0.2 < loss.item() < 5.0  # ~1 (eps-prediction starts near 0: loss ≈ E|z|² / D)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # The last layer of every residual branch starts near zero, so after the first step all parameters get gradients.
    assert sum(int(g.abs().sum() > 0) for g in grads) == len(grads)


@pytest.mark.parametrize("name", ["ddpmpp_cont", "ncsnpp_deep_cont"])
def test_paper_networks_at_reduced_width_run_on_cifar_sized_images(name):
    net = paper_config(name, nf=8)
    x = torch.randn(2, 3, 32, 32)
    out = net(x, torch.tensor([0.5, 900.0]))
    out.square().mean().backward()
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["ddpmpp_cont", "ncsnpp_cont"])
def test_uncentred_network_is_the_centred_one_applied_to_2x_minus_1(name):
    # data in [0, 1] (the VE experiments) are mapped to [-1, 1] inside the network, nowhere else
    centred = paper_config(name, nf=8, centered=True, init_scale=1.0).eval()  # outputs of order 1, not ~1e-6
    uncentred = paper_config(name, nf=8, centered=False, init_scale=1.0).eval()
    uncentred.load_state_dict(centred.state_dict())
    x, c = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.tensor([1.0, 10.0, 500.0])
    torch.testing.assert_close(uncentred(x, c), centred(2 * x - 1, c), rtol=0, atol=0)
    assert (uncentred(x, c) - centred(x, c)).abs().max() > 0.1  # and the mapping matters


def test_bad_configurations_are_explained():
    with pytest.raises(ValueError, match="unknown paper network 'ddpm'; available: ddpmpp_cont"):
        paper_config("ddpm")
    with pytest.raises(ValueError, match="progressive must be one of none, output_skip, residual"):
        NCSNpp(progressive="skip")
    with pytest.raises(ValueError, match=r"attn_resolutions \[12\] are not resolutions"):
        NCSNpp(attn_resolutions=(12,))
    with pytest.raises(ValueError, match="not divisible by 2\\^3"):
        NCSNpp(image_size=20)
    with pytest.raises(ValueError, match=r"expects images \(B, 3, 32, 32\), got shape \(2, 3, 16, 16\)"):
        paper_config("ddpmpp_cont", nf=8)(torch.zeros(2, 3, 16, 16), torch.zeros(2))
