"""The VAE: an encoder that returns a diagonal Gaussian q(z|x), a decoder that returns pixel logits.

The model is importable and does no I/O. Sampling is the caller's decision (diffusers-style): `encode`
returns a `DiagonalGaussian`, and its `sample` is the reparameterization trick, the one place
z = mean + exp(0.5 * log_variance) * eps is written in the training package.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class ModelConfig:
    image_shape: tuple[int, int, int] = (1, 8, 8)  # [C, H, W]
    latent_dim: int = 8
    arch: str = "mlp"
    hidden_dim: int = 0  # 0: sized from the image (400 for 28x28, as in Kingma & Welling)
    likelihood: str = "bernoulli"
    # Gaussian likelihood only: one learned log-sigma shared by all pixels, or a fixed sigma.
    learn_variance: bool = True
    sigma: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be [C, H, W] with positive sizes, got {list(self.image_shape)}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.arch == "conv" and (self.image_shape[1] % 4 or self.image_shape[2] % 4):
            raise ValueError(f"arch 'conv' needs H and W divisible by 4, got {list(self.image_shape[1:])}")

    @property
    def num_pixels(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @property
    def hidden(self) -> int:
        # 784 -> 400 as in the original paper; small images get a proportionally wide layer, never under 64.
        return self.hidden_dim or max(64, min(400, 2 * self.num_pixels))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


def reparameterize(mean: torch.Tensor, log_variance: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mean + sigma * eps: the noise is an input, so gradients flow to mean and log_variance."""
    return mean + torch.exp(0.5 * log_variance) * eps


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(log_variance))), batched over the first axis."""

    def __init__(self, mean: torch.Tensor, log_variance: torch.Tensor) -> None:
        self.mean = mean
        self.log_variance = log_variance

    def sample(self, generator: torch.Generator | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """One reparameterized sample; `eps` (standard normal, the mean's shape) when the caller owns the noise."""
        if eps is None:
            eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return reparameterize(self.mean, self.log_variance, eps)

    def kl_per_dim(self) -> torch.Tensor:
        """KL(q || N(0, I)) per latent dimension, closed form: [batch, latent_dim]."""
        return 0.5 * (self.mean.pow(2) + self.log_variance.exp() - 1.0 - self.log_variance)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) summed over latent dims; z may carry extra leading sample axes."""
        return (-0.5 * (LOG_2PI + self.log_variance + (z - self.mean).pow(2) / self.log_variance.exp())).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last axis."""
    return (-0.5 * (LOG_2PI + z.pow(2))).sum(-1)


class MLPEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(cfg.num_pixels, cfg.hidden), nn.ReLU())
        self.head = nn.Linear(cfg.hidden, 2 * cfg.latent_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_variance = self.head(self.body(image)).chunk(2, dim=-1)
        return mean, log_variance


class MLPDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.image_shape = cfg.image_shape
        self.net = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.num_pixels)
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent).view(-1, *self.image_shape)


def conv_widths(h: int, w: int) -> list[int]:
    """Channels after each stride-2 stage: two stages (H/4 x W/4, as for the 8x8 digits and 28x28 MNIST), then
    more while the map stays even and larger than 7x7, so 32 -> 4x4, 64 -> 4x4, 128 -> 4x4; widths double from 32
    up to 256 so each stage keeps about as many activations as the last."""
    stages = 2
    while (h >> stages) % 2 == 0 and (w >> stages) % 2 == 0 and min(h, w) >> stages > 7:
        stages += 1
    return [min(256, 32 << i) for i in range(stages)]


class ConvEncoder(nn.Module):
    """Stride-2 convolutions down to a small map (`conv_widths`), then a linear head to mean and log-variance."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.image_shape
        widths = conv_widths(h, w)
        scale = 1 << len(widths)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([c, *widths[:-1]], widths, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.body = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(widths[-1] * (h // scale) * (w // scale), cfg.hidden), nn.ReLU()
        )
        self.head = nn.Linear(cfg.hidden, 2 * cfg.latent_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_variance = self.head(self.body(image)).chunk(2, dim=-1)
        return mean, log_variance


class ConvDecoder(nn.Module):
    """The encoder mirrored: a linear layer to the encoder's last map, stride-2 transposed convolutions back."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.image_shape
        widths = conv_widths(h, w)
        scale = 1 << len(widths)
        self.grid = (widths[-1], h // scale, w // scale)
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden), nn.ReLU(),
            nn.Linear(cfg.hidden, math.prod(self.grid)), nn.ReLU(),
        )  # fmt: skip
        outs = [*reversed(widths[:-1]), c]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(reversed(widths), outs, strict=True):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])  # logits: no ReLU after the last

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(latent).view(-1, *self.grid))


class VAE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.arch == "mlp":
            self.encoder: nn.Module = MLPEncoder(cfg)
            self.decoder: nn.Module = MLPDecoder(cfg)
        else:
            self.encoder = ConvEncoder(cfg)
            self.decoder = ConvDecoder(cfg)
        # Gaussian likelihood: log sigma of p(x|z), a parameter when learned, a buffer when fixed.
        log_sigma = torch.tensor(math.log(cfg.sigma))
        if cfg.likelihood == "gaussian" and cfg.learn_variance:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def encode(self, image: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(*self.encoder(image))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Pixel logits; `decode_mean` maps them to the image the server returns."""
        return self.decoder(latent)

    def decode_mean(self, latent: torch.Tensor) -> torch.Tensor:
        """E[x|z] in [0, 1]: sigmoid of the logits for both likelihoods (the Gaussian mean is squashed too)."""
        return torch.sigmoid(self.decode(latent))

    def reconstruction_nll(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) in nats, summed over pixels: one value per image (extra leading axes allowed)."""
        if self.cfg.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(logits, image.expand_as(logits), reduction="none")
        else:
            inv_var = torch.exp(-2.0 * self.log_sigma)
            nll = 0.5 * (torch.sigmoid(logits) - image).pow(2) * inv_var + self.log_sigma + 0.5 * LOG_2PI
        return nll.flatten(start_dim=-3).sum(-1)

    def forward(
        self, image: torch.Tensor, generator: torch.Generator | None = None, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """One single-sample pass: (reconstruction NLL per image, posterior)."""
        posterior = self.encode(image)
        z = posterior.sample(generator, eps)
        return self.reconstruction_nll(image, self.decode(z)), posterior


def elbo_loss(
    model: VAE,
    image: torch.Tensor,
    beta: float = 1.0,
    free_bits: float = 0.0,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The training objective and what it reports, all in nats per image, with the reparameterized gradient.

    `eps` fixes the reparameterization noise (distributed training hands each rank its rows of one global draw).
    """
    reconstruction, posterior = model(image, generator, eps)
    return bound_terms(reconstruction, posterior, beta, free_bits)


def bound_terms(
    reconstruction: torch.Tensor, posterior: DiagonalGaussian, beta: float = 1.0, free_bits: float = 0.0
) -> dict[str, torch.Tensor]:
    """The loss and the bound's terms from the reconstruction NLL per image and the posterior.

    `loss` = reconstruction + beta * KL, where with free bits each latent dimension's batch-mean KL is
    floored at `free_bits` (Kingma et al. 2016) so the optimizer gains nothing by collapsing it further.
    `neg_elbo` is always the true bound (beta 1, no floor), the figure comparable across runs.
    """
    kl_per_dim = posterior.kl_per_dim().mean(0)  # [latent_dim], averaged over the batch
    reconstruction = reconstruction.mean()
    kl = kl_per_dim.sum()
    kl_term = kl_per_dim.clamp(min=free_bits).sum() if free_bits > 0 else kl
    return {
        "loss": reconstruction + beta * kl_term,
        "neg_elbo": reconstruction + kl,
        "reconstruction": reconstruction,
        "kl": kl,
        "kl_per_dim": kl_per_dim,
    }
