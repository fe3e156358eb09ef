"""The training loop: one TrainConfig, Adam, per-epoch validation, checkpoints, metrics and a report.

The same command runs under `torchrun --nproc-per-node N` with DistributedDataParallel. It is built so N
processes compute the updates of one process (up to float summation order): --batch-size is the global batch,
split across ranks; the DistributedSampler shards one seeded permutation so rank r's slice of global batch i is
perm[i*B + r :: N] (the last, partial batch too); and every rank draws the global batch's noise eps [B, latent]
from the same generator and takes the rows of its own images (eps[r::N]). Every rank holds the same number of
images per step, so DDP's average of the ranks' mean gradients is the global mean. The one difference: the
sampler drops the permutation's last (train images mod N) images so the shards are even. Rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .config import TrainConfig, TrainConfigError
from .data import Splits, dataset_spec, load_dataset
from .evaluate import elbo_terms
from .model import VAE, ModelConfig, elbo_loss


@dataclass
class Rank:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_flag: str) -> tuple[Rank, torch.device]:
    """One process, or one rank of a torchrun job (WORLD_SIZE set): gloo on CPU, nccl on GPU."""
    use_cuda = device_flag == "cuda" or (device_flag == "auto" and torch.cuda.is_available())
    if device_flag == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError("--device cuda: no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Rank(), torch.device("cuda" if use_cuda else "cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return Rank(dist.get_rank(), dist.get_world_size()), device


def model_config(cfg: TrainConfig, image_shape: tuple[int, int, int]) -> ModelConfig:
    try:
        return ModelConfig(image_shape=image_shape, latent_dim=cfg.latent_dim, arch=cfg.arch,
                           hidden_dim=cfg.hidden_dim, likelihood=cfg.likelihood,
                           learn_variance=cfg.learn_variance, sigma=cfg.sigma)  # fmt: skip
    except ValueError as exc:
        raise TrainConfigError(f"invalid model flags: {exc}") from exc


def split_validation(train: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random slice of the training split held out for validation: (train, val)."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * len(train)))
    return train[order[n_val:]], train[order[:n_val]]


def kl_weight(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """beta, ramped linearly from 0 over the first --kl-warmup-epochs (per step, so the ramp is smooth)."""
    if cfg.kl_warmup_epochs == 0:
        return cfg.beta
    progress = (epoch * steps_per_epoch + step + 1) / (cfg.kl_warmup_epochs * steps_per_epoch)
    return cfg.beta * min(1.0, progress)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> dict:
    """Train into `out` (checkpoint.pt, best.pt, config.json, metrics.jsonl, report/); returns best.pt's metrics."""
    rank, device = init_distributed(cfg.device)
    try:
        return _train(cfg, Path(out), resume, rank, device)
    finally:
        if rank.world_size > 1:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, resume: bool, rank: Rank, device: torch.device) -> dict:
    ckpt = None
    if resume:
        # The run's recorded hyperparameters win; only --epochs (the total to reach) comes from this command.
        ckpt = load_checkpoint(out / "checkpoint.pt")
        cfg = replace(TrainConfig.from_dict(ckpt["train_config"]), epochs=cfg.epochs, device=cfg.device)
        spec = ckpt["dataset"]
    else:
        spec = dataset_spec(cfg.dataset, cfg.data_dir, cfg.data_url, cfg.data_path)
    cfg.check(rank.world_size)

    splits = load_dataset(spec)
    train_x, val_x = split_validation(splits.train, cfg.val_fraction, cfg.seed)
    train_x, val_x = train_x.to(device), val_x.to(device)
    local_batch = cfg.batch_size // rank.world_size
    shard = len(train_x) // rank.world_size  # images per rank and epoch
    if shard == 0:
        raise TrainConfigError(f"{len(train_x)} training images cannot be shared by {rank.world_size} ranks")
    steps_per_epoch = -(-shard // local_batch)

    torch.manual_seed(cfg.seed)
    model_cfg = model_config(cfg, splits.image_shape)
    model = VAE(model_cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    noise = torch.Generator(device=device).manual_seed(cfg.seed)
    start_epoch, best = 0, math.inf
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        noise.set_state(ckpt["rng"]["noise"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        start_epoch, best = ckpt["epoch"], ckpt["metrics"]["best_val_neg_elbo"]
    ddp_model = DistributedDataParallel(model) if rank.world_size > 1 else model
    sampler = DistributedSampler(range(len(train_x)), num_replicas=rank.world_size, rank=rank.rank,
                                 shuffle=True, seed=cfg.seed, drop_last=True)  # fmt: skip

    metrics_path = out / "metrics.jsonl"
    if rank.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        # A fresh run starts a fresh log; a resumed one drops epochs logged after its checkpoint was written.
        history = [m for m in read_metrics(metrics_path) if m["epoch"] <= start_epoch] if resume else []
        metrics_path.write_text("".join(json.dumps(m) + "\n" for m in history))
        size = sum(p.numel() for p in model.parameters())
        print(f"training {model_cfg.arch} VAE (latent {model_cfg.latent_dim}, {size} parameters) on {splits.name}: "
              f"{len(train_x)} train / {len(val_x)} val / {len(splits.test)} test images {list(splits.image_shape)}, "
              f"{device}, {rank.world_size} process(es)", flush=True)  # fmt: skip

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), device=device)
        sums = torch.zeros(4, device=device, dtype=torch.float64)  # image-weighted loss, neg_elbo, recon, kl
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not rank.main, file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        start = time.perf_counter()
        for step in bar:
            x = train_x[order[step * local_batch : (step + 1) * local_batch]]
            eps = torch.randn(len(x) * rank.world_size, model_cfg.latent_dim, generator=noise, device=device)
            beta = kl_weight(cfg, epoch, step, steps_per_epoch)
            terms = elbo_loss(ddp_model, x, beta, cfg.free_bits, eps=eps[rank.rank :: rank.world_size])
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            step_terms = torch.stack([terms[k].detach() for k in ("loss", "neg_elbo", "reconstruction", "kl")])
            sums += step_terms * len(x)
            if rank.main and (step % 10 == 0 or step == steps_per_epoch - 1):  # .tolist() syncs a GPU: not every step
                loss, _, recon, kl = step_terms.tolist()
                bar.set_postfix(loss=f"{loss:.2f}", recon=f"{recon:.2f}", kl=f"{kl:.2f}", refresh=False)
        seconds = time.perf_counter() - start
        if rank.world_size > 1:
            dist.all_reduce(sums)
            sums /= rank.world_size
        loss, neg_elbo, recon, kl = (sums / shard).tolist()

        model.eval()
        val = elbo_terms(model, val_x, seed=cfg.seed)  # every rank holds the same weights and the same val slice
        record = {
            "epoch": epoch + 1, "loss": loss, "neg_elbo": neg_elbo, "reconstruction": recon, "kl": kl,
            "beta": beta, "val_neg_elbo": val["neg_elbo"].item(), "val_reconstruction": val["reconstruction"].item(),
            "val_kl": val["kl"].item(), "seconds": seconds,
            "images_per_s": shard * rank.world_size / seconds,
        }  # fmt: skip
        improved = record["val_neg_elbo"] < best
        best = min(best, record["val_neg_elbo"])
        if rank.main:
            state = {
                "model_config": model_cfg.to_dict(),
                "model": model.state_dict(),
                "train_config": asdict(cfg),
                "dataset": spec,
                "epoch": epoch + 1,
                "optimizer": optimizer.state_dict(),
                "rng": {"noise": noise.get_state(), "torch": torch.get_rng_state()},
                "metrics": {"val_neg_elbo": record["val_neg_elbo"], "best_val_neg_elbo": best,
                            "test_neg_elbo": None, "train_neg_elbo": neg_elbo},
            }  # fmt: skip
            save_checkpoint(out / "checkpoint.pt", state)
            if improved:
                save_checkpoint(out / "best.pt", state)
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {loss:8.3f}  recon {recon:8.3f}  kl {kl:7.3f}  "
                  f"val neg-elbo {record['val_neg_elbo']:8.3f}{' *' if improved else '  '}  "
                  f"{record['images_per_s']:7.0f} img/s", flush=True)  # fmt: skip

    if not rank.main:
        return {}
    return finish(out, splits, cfg.report)


def finish(out: Path, splits: Splits, report: bool) -> dict:
    """Score best.pt on the test split, store the figure in it (export copies it) and draw the report."""
    model, ckpt = load_model(out / "best.pt")
    test = elbo_terms(model, splits.test, seed=ckpt["train_config"]["seed"])
    ckpt["metrics"]["test_neg_elbo"] = test["neg_elbo"].item()
    save_checkpoint(out / "best.pt", ckpt)
    metrics = ckpt["metrics"]
    print(f"best epoch {ckpt['epoch']}: val neg-elbo {metrics['val_neg_elbo']:.3f}, test neg-elbo "
          f"{metrics['test_neg_elbo']:.3f} nats/image -> {out / 'best.pt'}", flush=True)  # fmt: skip
    if report:
        from .report import write_report

        write_report(model, splits, read_metrics(out / "metrics.jsonl"), out / "report")
        print(f"report: {out / 'report'}", flush=True)
    return metrics
