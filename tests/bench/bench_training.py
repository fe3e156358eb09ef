"""Training benchmark: `vaeserve train` against a minimal pytorch/examples vae/main.py loop, same data and seed.

Data: the MNIST test set in ../shared/data/mnist ($MNIST_DIR overrides): its first 9,000 images train, the last
1,000 are the test split. Both: MLP 784-400-20, batch 128, Adam 1e-3, 10 epochs, Bernoulli likelihood on the grey
values. Ours runs through the real CLI (`--dataset npz`; it holds 1% of the training images out for validation);
the baseline is the pytorch/examples loop (DataLoader, summed BCE + KLD). Both models are scored by the same code
(`vaeserve.training.evaluate`: single-sample neg-ELBO, IWAE K=1000), the baseline's weights loaded into our VAE,
which has the same layers. Throughput is training images per second (validation and evaluation excluded); the
two trainers' epochs alternate (ours continues with `--resume`, which is exact) so both see the same machine load.

    python -m tests.bench.bench_training
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.bench import mnist
from tests.bench.report import markdown_table, write_section
from vaeserve.cli import main as vaeserve
from vaeserve.training.checkpoint import load_model
from vaeserve.training.evaluate import evaluate
from vaeserve.training.model import VAE

EPOCHS, BATCH, LR, LATENT, SEED, IW_SAMPLES = 10, 128, 1e-3, 20, 0, 1000


class BaselineVAE(nn.Module):
    """pytorch/examples vae/main.py, as written there."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, LATENT)
        self.fc22 = nn.Linear(400, LATENT)
        self.fc3 = nn.Linear(LATENT, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def baseline_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


class Baseline:
    """The example's model, optimizer and train loop, one epoch per call.

    The example draws its shuffling and noise from the global torch RNG; the stream is saved and restored around
    each epoch, so the vaeserve epochs interleaved with it leave the baseline's run exactly as if it ran alone.
    """

    def __init__(self, train: torch.Tensor) -> None:
        torch.manual_seed(SEED)
        self.model = BaselineVAE()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.loader = DataLoader(TensorDataset(train), batch_size=BATCH, shuffle=True)
        self.rng = torch.get_rng_state()

    def epoch(self) -> float:
        """One epoch of the example's train(); returns its training images/s."""
        torch.set_rng_state(self.rng)
        self.model.train()
        start = time.perf_counter()
        for (data,) in self.loader:
            self.optimizer.zero_grad()
            recon_batch, mu, logvar = self.model(data)
            loss = baseline_loss(recon_batch, data, mu, logvar)
            loss.backward()
            self.optimizer.step()
        seconds = time.perf_counter() - start
        self.rng = torch.get_rng_state()
        return len(self.loader.dataset) / seconds


def as_vaeserve_model(baseline: BaselineVAE, like: VAE) -> VAE:
    """The baseline's weights in our VAE (same layers: fc21/fc22 are the two halves of our encoder head)."""
    state = {
        "encoder.body.1.weight": baseline.fc1.weight, "encoder.body.1.bias": baseline.fc1.bias,
        "encoder.head.weight": torch.cat([baseline.fc21.weight, baseline.fc22.weight]),
        "encoder.head.bias": torch.cat([baseline.fc21.bias, baseline.fc22.bias]),
        "decoder.net.0.weight": baseline.fc3.weight, "decoder.net.0.bias": baseline.fc3.bias,
        "decoder.net.2.weight": baseline.fc4.weight, "decoder.net.2.bias": baseline.fc4.bias,
        "log_sigma": like.log_sigma,
    }  # fmt: skip
    model = VAE(like.cfg)
    model.load_state_dict(state)
    return model.eval()


def our_command(workdir: Path) -> list[str]:
    """`vaeserve train --dataset npz` on the same split, without --epochs; the baseline's model and loss spelled
    out, not left to defaults that change."""
    data = mnist.write_npz(workdir / "mnist-t10k.npz")
    return ["train", "--dataset", "npz", "--data-path", str(data), "--arch", "mlp", "--latent-dim", str(LATENT),
            "--hidden-dim", "400", "--likelihood", "bernoulli", "--beta", "1", "--kl-warmup-epochs", "0",
            "--batch-size", str(BATCH), "--lr", str(LR), "--seed", str(SEED),
            "--val-fraction", "0.01", "--no-report", "--out", str(workdir / "run")]  # fmt: skip


def our_epoch(command: list[str], epoch: int) -> float:
    """Trains up to `epoch`, resuming the run after the first (an exact continuation); returns its images/s."""
    if vaeserve([*command, "--epochs", str(epoch), *(["--resume"] if epoch > 1 else [])]) != 0:
        sys.exit("vaeserve train failed")
    out = Path(command[command.index("--out") + 1])
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["images_per_s"]


def main() -> None:
    if not mnist.available():
        sys.exit(f"{mnist.MNIST_DIR}: MNIST test-set files not found (set mnist.MNIST_DIR)")
    images, _ = mnist.t10k()
    train = torch.from_numpy(images[: mnist.N_TRAIN].astype(np.float32) / 255.0).unsqueeze(1)
    test = torch.from_numpy(images[mnist.N_TRAIN :].astype(np.float32) / 255.0).unsqueeze(1)
    print(
        f"MNIST t10k from {mnist.MNIST_DIR}: {len(train)} train / {len(test)} test, {torch.get_num_threads()} threads"
    )

    # Epochs alternate between the two trainers, so both see the same load on a shared machine.
    baseline = Baseline(train)
    speeds: dict[str, list[float]] = {"baseline": [], "vaeserve": []}
    with tempfile.TemporaryDirectory() as tmp:
        command = our_command(Path(tmp))
        for epoch in range(1, EPOCHS + 1):
            speeds["baseline"].append(baseline.epoch())
            speeds["vaeserve"].append(our_epoch(command, epoch))
        ours, _ = load_model(Path(tmp) / "run" / "best.pt")
    baseline_speed, our_speed = (statistics.median(v) for v in speeds.values())
    ratio = statistics.median(o / b for o, b in zip(speeds["vaeserve"], speeds["baseline"], strict=True))
    results = {}
    for name, model in (("pytorch/examples baseline", as_vaeserve_model(baseline.model, ours)), ("vaeserve", ours)):
        results[name] = evaluate(model, test, iw_samples=IW_SAMPLES, seed=SEED)

    rows = [
        [name, f"{r['neg_elbo']:.2f}", f"{r['iw_nll']:.2f}", f"{r['kl']:.2f}", r["active_units"], f"{speed:,.0f}"]
        for (name, r), speed in zip(results.items(), (baseline_speed, our_speed), strict=True)
    ]
    table = markdown_table(
        ["trainer", "test neg-ELBO (nats)", f"IWAE NLL K={IW_SAMPLES} (nats)", "KL (nats)", "active units",
         "train images/s"], rows)  # fmt: skip
    elbo_gap = results["vaeserve"]["neg_elbo"] - results["pytorch/examples baseline"]["neg_elbo"]
    summary = (
        f"vaeserve vs baseline: test neg-ELBO {elbo_gap:+.2f} nats (goal <= 0), "
        f"throughput {ratio:.2f}x (goal >= 0.9x; median over epochs of the paired ratio)."
    )
    body = (
        f"MNIST test set (`{mnist.MNIST_DIR.name}`): first {mnist.N_TRAIN:,} images train, last {len(test):,} test. "
        "MLP "
        f"784-400-{LATENT}, batch {BATCH}, Adam {LR:g}, {EPOCHS} epochs, seed {SEED}, Bernoulli on grey values. "
        "Both models scored by `vaeserve.training.evaluate` on the test images; vaeserve trains through "
        "`vaeserve train --dataset npz` and holds 1% of its training images out for validation/best.pt. "
        "Throughput: median over epochs of training images/s (steps only); the two trainers' epochs alternate. "
        "Reproduce: `python -m tests.bench.bench_training`.\n\n"
        f"{table}\n\n{summary}"
    )
    print(table)
    print(summary)
    write_section("training", "Training: vaeserve vs pytorch/examples VAE on MNIST", body)


if __name__ == "__main__":
    main()
