"""A fixed, lossless latent space for the toy world: an `AutoencoderKL` whose weights are set by
hand so that encoding is a 2x2 average pool and decoding a 2x nearest upsample.

Training a VAE is the most expensive and least interesting part of a tiny Stable Diffusion on
2 CPU cores. The world is drawn as 16x16 pixel art shown at 32 px (every cell is a 2x2 block), so
a 2x-downsampling VAE that averages blocks and repeats them loses nothing on it. The result is a
standard diffusers AutoencoderKL (same class, same config keys as SD's), so `from_pretrained`, the
train job and the pipelines use it unchanged.

How the weights make it exact (the only non-linear layers on the path are the final GroupNorm and
SiLU; every ResNet block is made an identity by zeroing its last convolution):
- each GroupNorm group holds four channels: a signal s, its negation -s and two constants K. The
  group's mean is then exactly K/2 and its standard deviation K/2 up to a factor
  sqrt(1 + 2 E[s^2] / K^2) (1e-4 for K=100), so the norm maps s to 2s/K - 1 whatever the image;
- a bias of +1 recentres that to 2s/K, and SiLU(y) - SiLU(-y) = y exactly, so the output
  convolution recovers s from the s and -s channels.
Latent channel 3 carries no signal (always 0); the posterior's log-variance is fixed at -30.
"""

from __future__ import annotations

import torch

CONSTANT = 100.0
"""K above: larger is more exact, smaller keeps activations far from float32 rounding."""
CHANNELS = 16
"""Four GroupNorm groups of four channels: one group per latent channel."""
LATENT_CHANNELS = 4


# The VAE's architecture, shared with the flow-matching base's AutoencoderKLFlux2
# (toyworld/flow_base.py), whose encoder and decoder are the same diffusers modules.
ARCHITECTURE = {"in_channels": 3, "out_channels": 3, "latent_channels": LATENT_CHANNELS,
                "block_out_channels": (CHANNELS, CHANNELS), "layers_per_block": 1,
                "down_block_types": ("DownEncoderBlock2D",) * 2,
                "up_block_types": ("UpDecoderBlock2D",) * 2, "norm_num_groups": CHANNELS // 4,
                "mid_block_add_attention": False}


def build_vae(sample_size: int = 32):
    from diffusers import AutoencoderKL  # deferred: diffusers is heavy

    vae = AutoencoderKL(**ARCHITECTURE, sample_size=sample_size)
    set_lossless_weights(vae)
    vae.register_to_config(scaling_factor=1.0)
    return vae.eval().requires_grad_(False)


def set_lossless_weights(vae) -> None:
    """Set the weights of a VAE built with ARCHITECTURE (diffusers' Encoder and Decoder, 1x1
    quant_conv and post_quant_conv) so that it encodes as a 2x2 average and decodes as a 2x
    nearest upsample."""
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for module in vae.modules():
            if module.__class__.__name__ == "ResnetBlock2D":
                # conv2 = 0 makes the block its shortcut: the identity (channels never change).
                module.norm1.weight.fill_(1.0)
                module.norm2.weight.fill_(1.0)
        enc, dec = vae.encoder, vae.decoder
        _split(enc.conv_in, inputs=3)
        # The encoder's one Downsample2D pads right/bottom by 1 and convolves 3x3 with stride 2:
        # weights on the top-left 2x2 taps average each block.
        down = enc.down_blocks[0].downsamplers[0].conv
        for c in range(CHANNELS):
            down.weight[c, c, :2, :2] = 0.25
        _merge(enc.conv_norm_out, enc.conv_out, outputs=LATENT_CHANNELS)
        enc.conv_out.bias[LATENT_CHANNELS:] = -30.0
        _identity(vae.quant_conv)
        _identity(vae.post_quant_conv)
        _split(dec.conv_in, inputs=LATENT_CHANNELS)
        _centre_identity(dec.up_blocks[0].upsamplers[0].conv)
        _merge(dec.conv_norm_out, dec.conv_out, outputs=3)


def _identity(conv) -> None:
    n = min(conv.in_channels, conv.out_channels)
    conv.weight[range(n), range(n), 0, 0] = 1.0


def _centre_identity(conv) -> None:
    n = conv.in_channels
    conv.weight[range(n), range(n), 1, 1] = 1.0


def _split(conv, inputs: int) -> None:
    """Input channel i -> group i as (s, -s, K, K); groups beyond `inputs` hold (0, 0, K, K)."""
    for g in range(CHANNELS // 4):
        if g < inputs:
            conv.weight[4 * g, g, 1, 1] = 1.0
            conv.weight[4 * g + 1, g, 1, 1] = -1.0
        conv.bias[4 * g + 2: 4 * g + 4] = CONSTANT


def _merge(norm, conv, outputs: int) -> None:
    """GroupNorm + SiLU + 3x3 conv that turn each (s, -s, K, K) group back into s."""
    norm.weight.fill_(1.0)
    for g in range(CHANNELS // 4):
        norm.bias[4 * g: 4 * g + 2] = 1.0
        if g < outputs:
            conv.weight[g, 4 * g, 1, 1] = CONSTANT / 2
            conv.weight[g, 4 * g + 1, 1, 1] = -CONSTANT / 2
