"""The VAE: an encoder q(z|x) = N(mean, diag exp(log_var)) and a decoder giving
the logits of p(x|z). Two architectures share one interface: MLP and conv.

The decoder gives P values per pixel value: P = 1 logit for the Bernoulli
likelihoods, P = 2 (location, log-scale) for the discretised logistic."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from trainer.objectives import reparameterize


@dataclass(frozen=True)
class Shape:
    channels: int
    height: int
    width: int

    @property
    def size(self) -> int:
        return self.channels * self.height * self.width


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x (B, C, H, W) in [0, 1] -> mean, log_var (B, L)."""

    def __init__(self, body: nn.Module, features: int, latent_dim: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(features, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.head(self.body(x)).chunk(2, dim=-1)
        return mean, log_var


class Decoder(nn.Module):
    """z (B, L) -> logits (B, P·C, H, W); `shape` is that output's."""

    def __init__(self, body: nn.Module, shape: Shape) -> None:
        super().__init__()
        self.body = body
        self.shape = shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(z)
        s = self.shape
        if out.dim() == 2:
            return out.reshape(-1, s.channels, s.height, s.width)
        # Conv decoders upsample to a multiple of 4; crop back to the image size.
        return out[:, :, : s.height, : s.width]


def mlp_vae(
    shape: Shape, latent_dim: int, hidden: list[int], out: Shape
) -> tuple[Encoder, Decoder]:
    encoder_body = nn.Sequential(nn.Flatten(), _mlp([shape.size, *hidden]), nn.ELU())
    decoder_body = _mlp([latent_dim, *reversed(hidden), out.size])
    return Encoder(encoder_body, hidden[-1], latent_dim), Decoder(decoder_body, out)


def conv_vae(
    shape: Shape, latent_dim: int, hidden: list[int], out: Shape
) -> tuple[Encoder, Decoder]:
    """Two stride-2 convolutions down, two transposed convolutions up.

    hidden = [c1, c2, fc]: channel widths of the two conv stages and the width
    of the fully connected layer between them and the latent.
    """
    if len(hidden) != 3:
        raise ValueError("conv architecture takes --hidden C1 C2 FC (three widths)")
    c1, c2, fc = hidden
    h4, w4 = math.ceil(shape.height / 4), math.ceil(shape.width / 4)
    encoder_body = nn.Sequential(
        nn.Conv2d(shape.channels, c1, 4, stride=2, padding=1 + shape.height % 2),
        nn.ELU(),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1),
        nn.ELU(),
        nn.AdaptiveAvgPool2d((h4, w4)),  # a no-op at sizes divisible by 4
        nn.Flatten(),
        nn.Linear(c2 * h4 * w4, fc),
        nn.ELU(),
    )
    decoder_body = nn.Sequential(
        nn.Linear(latent_dim, fc),
        nn.ELU(),
        nn.Linear(fc, c2 * h4 * w4),
        nn.ELU(),
        nn.Unflatten(1, (c2, h4, w4)),
        nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # (B, c1, 2·h4, 2·w4)
        nn.ELU(),
        nn.ConvTranspose2d(c1, out.channels, 4, stride=2, padding=1),  # (B, P·C, 4·h4, 4·w4)
    )
    return Encoder(encoder_body, fc, latent_dim), Decoder(decoder_body, out)


class VAE(nn.Module):
    def __init__(
        self,
        shape: Shape,
        latent_dim: int,
        architecture: str,
        hidden: list[int],
        parameters_per_value: int = 1,
    ) -> None:
        super().__init__()
        build = {"mlp": mlp_vae, "conv": conv_vae}.get(architecture)
        if build is None:
            raise ValueError(f"unknown architecture {architecture!r}; expected mlp or conv")
        self.shape = shape
        self.latent_dim = latent_dim
        out = Shape(shape.channels * parameters_per_value, shape.height, shape.width)
        self.encoder, self.decoder = build(shape, latent_dim, hidden, out)
        self.bf16 = False  # training's forward: networks in bf16 autocast, the maths in fp32

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)  # type: ignore[no-any-return]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits for z of shape (..., L): leading sample axes are flattened and restored."""
        lead = z.shape[:-1]
        logits = self.decoder(z.reshape(-1, self.latent_dim))
        return logits.reshape(*lead, *logits.shape[1:])  # type: ignore[no-any-return]

    def forward(
        self, x: torch.Tensor, k: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """mean, log_var (B, L); z (k, B, L); logits (k, B, C, H, W), all float32.

        With `bf16` the encoder and decoder run under bf16 autocast, but z is drawn and
        every density evaluated in float32: the importance weights need the precision.
        """
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.bf16):
            mean, log_var = self.encode(x)
        mean, log_var = mean.float(), log_var.float()
        eps = torch.randn((k, *mean.shape), device=x.device)
        z = reparameterize(mean, log_var, eps)
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.bf16):
            logits = self.decode(z)
        return mean, log_var, z, logits.float()
