"""pix2pix networks for SE -> (bone, soft tissue): a U-Net generator and a PatchGAN discriminator.

Generator (`define_G`) is the reference ``unet_256``: `depth` (default 8) down/up levels of 4x4 stride-2
convolutions, LeakyReLU(0.2) in the encoder, ReLU in the decoder, skip concatenation at every level, Tanh at the
end. Dropout(0.5) sits in the `dropout_blocks` (default 3) decoder levels directly above the innermost one, as in
the reference implementation. 1 input channel (SE), 2 output channels (bone, soft), values in [-1, 1]. H and W
must be multiples of ``2**depth`` (256 for the default): every level halves them.

Discriminator (`define_D`) is the 70x70 PatchGAN (``n_layers=3``) on the concatenated (SE, bone, soft) pair,
3 input channels, one logit per overlapping 70x70 patch.

Inference semantics: the generator always runs in **eval mode** at inference and export - dropout off,
BatchNorm normalising with its running statistics. pix2pix itself keeps dropout (and batch statistics) on at
test time as a source of noise; dexrt does not, because a clinical runtime must give the same output for the
same input, independent of batch size and of the other images in the batch.

Weights start from normal(0, 0.02) (norm layer scales from normal(1, 0.02)), drawn from a generator seeded with
the config's `seed`, so building the same config twice gives bitwise-identical networks without touching the
global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

NORMS = ("batch", "instance")
UPSAMPLES = ("transpose", "resize")


@dataclass(frozen=True)
class GeneratorConfig:
    """U-Net generator options (pix2pix ``unet_256`` defaults)."""

    in_channels: int = 1
    out_channels: int = 2
    ngf: int = 64
    depth: int = 8
    norm: str = "batch"
    dropout: float = 0.5
    dropout_blocks: int = 3
    init_gain: float = 0.02
    seed: int = 0
    # "transpose": 4x4 stride-2 transposed convolutions (pix2pix); "resize": nearest 2x upsampling + 3x3
    # convolution, which leaves no checkerboard and which OpenVINO can run in INT8
    upsample: str = "transpose"
    # soft from the SE image: out = (bone, se - bone + soft_offset + correction), in the network's units. Needs
    # one window for SE, bone and soft (the robust normalisation), where soft_offset = -1 - 2 lo / (hi - lo)
    # makes "soft = SE - bone" exact in physical terms; the network then learns bone and a small correction.
    soft_from_se: bool = False
    soft_offset: float = 0.0
    # channels of a full-resolution head (0: none). The outermost decoder level then ends in `head` feature
    # channels at the input's resolution, and two 3x3 convolutions map (SE, features) to the output, so that
    # detail of 1-2 px (rib cortices) can come from the SE image itself and not only through the 2x-down encoder.
    head: int = 0

    def __post_init__(self) -> None:
        _check_common(self.norm, self.init_gain)
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {self.upsample!r}")
        if self.soft_from_se and (self.in_channels, self.out_channels) != (1, 2):
            raise ValueError("soft_from_se needs 1 input (SE) and 2 output (bone, soft) channels")
        if self.in_channels < 1 or self.out_channels < 1 or self.ngf < 1:
            raise ValueError("in_channels, out_channels and ngf must be >= 1")
        if self.head < 0:
            raise ValueError(f"head must be >= 0, got {self.head}")
        if not 2 <= self.depth <= 12:
            raise ValueError(f"depth must be in [2, 12], got {self.depth}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout_blocks < 0:
            raise ValueError(f"dropout_blocks must be >= 0, got {self.dropout_blocks}")

    @property
    def size_multiple(self) -> int:
        """H and W of an input must be multiples of this."""
        return 2**self.depth


@dataclass(frozen=True)
class DiscriminatorConfig:
    """PatchGAN discriminator options (pix2pix ``basic``: 70x70 patches for n_layers=3)."""

    in_channels: int = 3
    ndf: int = 64
    n_layers: int = 3
    norm: str = "batch"
    init_gain: float = 0.02
    seed: int = 1

    def __post_init__(self) -> None:
        _check_common(self.norm, self.init_gain)
        if self.in_channels < 1 or self.ndf < 1:
            raise ValueError("in_channels and ndf must be >= 1")
        if not 1 <= self.n_layers <= 6:
            raise ValueError(f"n_layers must be in [1, 6], got {self.n_layers}")


def _check_common(norm: str, init_gain: float) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not init_gain > 0:
        raise ValueError(f"init_gain must be > 0, got {init_gain}")


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    # pix2pix's instance norm: no affine parameters, no running statistics (same in train and eval)
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class UnetGenerator(nn.Module):
    """U-Net: encoder level i maps (N, c_{i-1}, H/2^i, W/2^i) -> (N, c_i, H/2^(i+1), W/2^(i+1)), c_i = ngf*min(2^i, 8).

    The encoder outputs are post-activation (LeakyReLU), which is what the reference implementation
    concatenates into its skips (its in-place LeakyReLU rewrites the skipped tensor).
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        d, ngf, norm = config.depth, config.ngf, config.norm
        use_bias = norm == "instance"  # BatchNorm has its own shift; instance norm here has none
        ch = [ngf * min(2**i, 8) for i in range(d)]  # channels after encoder level i

        enc: list[nn.Module] = []
        for i in range(d):
            c_in = config.in_channels if i == 0 else ch[i - 1]
            conv = nn.Conv2d(c_in, ch[i], 4, 2, 1, bias=use_bias)
            if i == 0:
                layers = [conv, nn.LeakyReLU(0.2)]
            elif i == d - 1:  # innermost: no norm (1x1 at 256); the decoder's ReLU comes next
                layers = [conv, nn.ReLU()]
            else:
                layers = [conv, _norm_layer(norm, ch[i]), nn.LeakyReLU(0.2)]
            enc.append(nn.Sequential(*layers))

        def up(c_in: int, c_out: int, bias: bool) -> list[nn.Module]:  # (N, c_in, h, w) -> (N, c_out, 2h, 2w)
            if config.upsample == "resize":
                return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias)]
            return [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias)]

        dec: list[nn.Module] = []
        first_dropout = max(1, d - 1 - config.dropout_blocks)
        for i in range(d):
            c_out = config.out_channels if i == 0 else ch[i - 1]
            if i == 0 and config.head:  # outermost, feeding the head: cat(skip_0, up_1) -> head features
                layers = [nn.ReLU(), *up(2 * ch[0], config.head, use_bias), _norm_layer(norm, config.head), nn.ReLU()]
            elif i == 0:  # outermost: cat(skip_0, up_1) -> output, Tanh; bias kept, no norm
                layers = [nn.ReLU(), *up(2 * ch[0], c_out, True), nn.Tanh()]
            elif i == d - 1:  # innermost: no skip to concatenate, ReLU already applied
                layers = [*up(ch[i], c_out, use_bias), _norm_layer(norm, c_out)]
            else:
                layers = [nn.ReLU(), *up(2 * ch[i], c_out, use_bias), _norm_layer(norm, c_out)]
                if i >= first_dropout and config.dropout > 0:
                    layers.append(nn.Dropout(config.dropout))
            dec.append(nn.Sequential(*layers))

        self.encoder = nn.ModuleList(enc)
        self.decoder = nn.ModuleList(dec)
        # full-resolution head: cat(SE, features) -> 3x3 conv, norm, ReLU -> 3x3 conv -> output, Tanh
        self.head = nn.Sequential(
            nn.Conv2d(config.in_channels + config.head, config.head, 3, 1, 1, bias=use_bias),
            _norm_layer(norm, config.head), nn.ReLU(),
            nn.Conv2d(config.head, config.out_channels, 3, 1, 1, bias=True), nn.Tanh()) if config.head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, in_channels, H, W), H and W multiples of 2**depth -> (N, out_channels, H, W) in [-1, 1]
        skips = []
        h = x
        for level in self.encoder:
            h = level(h)
            skips.append(h)
        h = self.decoder[-1](skips[-1])  # (N, c_{d-2}, H/2^(d-1), W/2^(d-1))
        for i in range(len(self.decoder) - 2, -1, -1):
            h = self.decoder[i](torch.cat([skips[i], h], dim=1))
        if self.head is not None:  # (N, head, H, W) features -> (N, out_channels, H, W)
            h = self.head(torch.cat([x, h], dim=1))
        if self.config.soft_from_se:  # (bone, correction) -> (bone, se - bone + offset + correction)
            bone, correction = h[:, :1], h[:, 1:]
            h = torch.cat([bone, x - bone + self.config.soft_offset + correction], dim=1)
        return h


class PatchDiscriminator(nn.Module):
    """PatchGAN: (N, in_channels, H, W) -> (N, 1, H', W') logits, one per receptive-field patch."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        ndf, norm = config.ndf, config.norm
        use_bias = norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, config.n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < config.n_layers else 1  # the last one keeps the resolution
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=use_bias),
                       _norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(net: nn.Module, gain: float, seed: int) -> None:
    """pix2pix 'normal' init of every parameter and buffer, from a private seeded generator.

    Covers everything these networks hold, so it also initialises a network built on the meta device.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, gain, generator=gen)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, gain, generator=gen)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()


def _build(cls: type[nn.Module], config: GeneratorConfig | DiscriminatorConfig) -> nn.Module:
    # Built on the meta device: PyTorch's default init would draw from (and advance) the global RNG and cost
    # time for large widths, only to be overwritten by init_weights.
    with torch.device("meta"):
        net = cls(config)
    net.to_empty(device="cpu")
    init_weights(net, config.init_gain, config.seed)
    return net


def define_G(config: GeneratorConfig | None = None) -> UnetGenerator:
    """Build and initialise the U-Net generator (on the CPU, in training mode)."""
    net = _build(UnetGenerator, config or GeneratorConfig())
    assert isinstance(net, UnetGenerator)
    return net


def define_D(config: DiscriminatorConfig | None = None) -> PatchDiscriminator:
    """Build and initialise the PatchGAN discriminator (on the CPU, in training mode)."""
    net = _build(PatchDiscriminator, config or DiscriminatorConfig())
    assert isinstance(net, PatchDiscriminator)
    return net


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
