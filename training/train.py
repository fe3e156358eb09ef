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
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from vaeserve.progress import Progress, write

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .config import TrainConfig, TrainConfigError
from .data import Splits, as_float, dataset_spec, load_dataset
from .estimators import training_loss
from .evaluate import elbo_terms
from .model import VAE, ModelConfig


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


def split_validation(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random slice of the training split's `count` rows held out for validation: (train rows, val rows).
    Rows, not images: a folder's training pictures may be memory-mapped and are read per batch."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(fraction * count))
    return order[n_val:], order[:n_val]


def kl_weight(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """beta, ramped linearly from 0 over the first --kl-warmup-epochs (per step, so the ramp is smooth)."""
    if cfg.kl_warmup_epochs == 0:
        return cfg.beta
    progress = (epoch * steps_per_epoch + step + 1) / (cfg.kl_warmup_epochs * steps_per_epoch)
    return cfg.beta * min(1.0, progress)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def train(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    log: TextIO | None = None,
    progress: Progress | None = None,
    label: str = "train",
) -> dict:
    """Train into `out` (checkpoint.pt, best.pt, config.json, metrics.jsonl, report/); returns best.pt's metrics.

    A line per epoch and the summary go to `log` (default: stdout). Progress (default: Progress()) goes to stderr
    from rank 0: on a terminal a bar over the run's images (`label`) above one over the epoch's batches, otherwise
    a `label` line every so often.
    """
    rank, device = init_distributed(cfg.device)
    try:
        run = setup(cfg, Path(out), resume, rank, device, log or sys.stdout)
        policy = (progress or Progress()) if rank.main else Progress(quiet=True)
        images = (run.cfg.epochs - run.start_epoch) * run.shard * rank.world_size
        with policy.meter(images, label, "images") as meter:
            for epoch in range(run.start_epoch, run.cfg.epochs):
                meter.set_postfix_str(f"epoch {epoch + 1} of {run.cfg.epochs}")
                record = train_epoch(run, epoch, policy, meter)
                validate_and_save(run, epoch, record, meter)
        return finish(run.out, run.splits, run.cfg.report, run.log) if rank.main else {}
    finally:
        if rank.world_size > 1:
            dist.destroy_process_group()


@dataclass
class Run:
    """One run's state between epochs: what `setup` builds and each epoch reads and updates."""

    cfg: TrainConfig
    out: Path
    rank: Rank
    device: torch.device
    log: TextIO
    spec: dict  # the checkpoint's "dataset" entry
    splits: Splits
    train_rows: torch.Tensor  # the rows of splits.train trained on (the rest is validation)
    val_x: torch.Tensor
    model: VAE
    ddp_model: nn.Module  # `model`, wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    noise: torch.Generator  # the reparameterization noise, one stream shared by all ranks
    sampler: DistributedSampler
    start_epoch: int
    best: float  # lowest validation neg-ELBO so far

    @property
    def local_batch(self) -> int:
        return self.cfg.batch_size // self.rank.world_size

    @property
    def shard(self) -> int:
        """Training images per rank and epoch."""
        return len(self.train_rows) // self.rank.world_size

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.shard // self.local_batch)


def setup(cfg: TrainConfig, out: Path, resume: bool, rank: Rank, device: torch.device, log: TextIO) -> Run:
    """Data, model, optimizer and noise for a fresh run, or restored exactly from OUT/checkpoint.pt."""
    ckpt = None
    if resume:
        # The run's recorded hyperparameters win; only --epochs (the total to reach) comes from this command.
        ckpt = load_checkpoint(out / "checkpoint.pt")
        cfg = replace(TrainConfig.from_dict(ckpt["train_config"]), epochs=cfg.epochs, device=cfg.device)
        spec = ckpt["dataset"]
    else:
        spec = dataset_spec(cfg.dataset, cfg.data_dir, cfg.data_url, cfg.data_path, cfg.image_size, cfg.channels)
    cfg.check(rank.world_size)

    splits = load_dataset(spec, cfg.memory_mb)
    train_rows, val_rows = split_validation(len(splits.train), cfg.val_fraction, cfg.seed)
    if len(train_rows) // rank.world_size == 0:
        raise TrainConfigError(f"{len(train_rows)} training images cannot be shared by {rank.world_size} ranks")

    torch.manual_seed(cfg.seed)
    model = VAE(model_config(cfg, splits.image_shape)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    noise = torch.Generator(device=device).manual_seed(cfg.seed)
    start_epoch, best = 0, math.inf
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        noise.set_state(ckpt["rng"]["noise"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        start_epoch, best = ckpt["epoch"], ckpt["metrics"]["best_val_neg_elbo"]
    sampler = DistributedSampler(range(len(train_rows)), num_replicas=rank.world_size, rank=rank.rank,
                                 shuffle=True, seed=cfg.seed, drop_last=True)  # fmt: skip
    val_x = as_float(splits.train[val_rows]).to(device)
    run = Run(cfg, out, rank, device, log, spec, splits, train_rows, val_x, model,
              DistributedDataParallel(model) if rank.world_size > 1 else model, optimizer, noise, sampler,
              start_epoch, best)  # fmt: skip
    if rank.main:
        start_log(run, resume)
        if splits.files:
            write_split(out / "split.json", splits.files, train_rows, val_rows)
    return run


def write_split(path: Path, files: dict[str, list[str]], train_rows: torch.Tensor, val_rows: torch.Tensor) -> None:
    """A folder's pictures by split, as paths relative to it: what was trained on, validated and tested on."""
    split = {"train": [files["train"][i] for i in train_rows], "val": [files["train"][i] for i in val_rows],
             "test": files["test"]}  # fmt: skip
    path.write_text(json.dumps(split, indent=1) + "\n")


def start_log(run: Run, resume: bool) -> None:
    """config.json, metrics.jsonl as of the start epoch, and the run's first line."""
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "config.json").write_text(json.dumps(asdict(run.cfg), indent=2) + "\n")
    # A fresh run starts a fresh log; a resumed one drops epochs logged after its checkpoint was written.
    metrics_path = run.out / "metrics.jsonl"
    history = [m for m in read_metrics(metrics_path) if m["epoch"] <= run.start_epoch] if resume else []
    metrics_path.write_text("".join(json.dumps(m) + "\n" for m in history))
    model_cfg, splits = run.model.cfg, run.splits
    size = sum(p.numel() for p in run.model.parameters())
    print(f"training {model_cfg.arch} VAE (latent {model_cfg.latent_dim}, {size} parameters) on {splits.name}: "
          f"{len(run.train_rows)} train / {len(run.val_x)} val / {len(splits.test)} test images "
          f"{list(splits.image_shape)}, {run.device}, {run.rank.world_size} process(es)",
          file=run.log, flush=True)  # fmt: skip


def train_epoch(run: Run, epoch: int, policy: Progress, meter: Any) -> dict:
    """One pass over this rank's shard, counted on `meter` (the run's) and shown on a bar of its own on a terminal;
    returns the epoch's image-weighted training figures (all ranks')."""
    cfg, rank, steps = run.cfg, run.rank, run.steps_per_epoch
    run.model.train()
    run.sampler.set_epoch(epoch)
    order = torch.tensor(list(run.sampler))
    sums = torch.zeros(4, device=run.device, dtype=torch.float64)  # image-weighted loss, neg_elbo, recon, kl
    # detail: on a terminal only; in plain lines the run's meter says it, and the epoch line follows.
    bar = policy.meter(steps, f"epoch {epoch + 1}/{cfg.epochs}", "batches", detail=True, leave=False)
    start = time.perf_counter()
    for step in range(steps):
        rows = run.train_rows[order[step * run.local_batch : (step + 1) * run.local_batch]]
        x = as_float(run.splits.train[rows]).to(run.device)
        eps = torch.randn(len(x) * rank.world_size, run.model.cfg.latent_dim, generator=run.noise, device=run.device)
        beta = kl_weight(cfg, epoch, step, steps)
        terms = training_loss(run.ddp_model, x, cfg.estimator, beta, cfg.free_bits, eps[rank.rank :: rank.world_size])
        run.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        run.optimizer.step()
        step_terms = torch.stack([terms[k].detach() for k in ("loss", "neg_elbo", "reconstruction", "kl")])
        sums += step_terms * len(x)
        if not bar.disable and (step % 10 == 0 or step == steps - 1):  # .tolist() syncs a GPU: not every step
            loss, _, recon, kl = step_terms.tolist()
            bar.set_postfix_str(f"loss={loss:.2f}, recon={recon:.2f}, kl={kl:.2f}", refresh=False)
        bar.update()
        meter.update(len(x) * rank.world_size)
    bar.close()
    seconds = time.perf_counter() - start
    if rank.world_size > 1:
        dist.all_reduce(sums)
        sums /= rank.world_size
    loss, neg_elbo, recon, kl = (sums / run.shard).tolist()
    return {"epoch": epoch + 1, "loss": loss, "neg_elbo": neg_elbo, "reconstruction": recon, "kl": kl, "beta": beta,
            "seconds": seconds, "images_per_s": run.shard * rank.world_size / seconds}  # fmt: skip


def validate_and_save(run: Run, epoch: int, record: dict, meter: Any) -> None:
    """Score the validation slice, then (rank 0) write checkpoint.pt, best.pt if it improved, and the metrics."""
    run.model.eval()
    # Every rank holds the same weights and the same validation slice.
    val = elbo_terms(run.model, run.val_x, seed=run.cfg.seed, sample=run.cfg.estimator != "deterministic")
    record.update(val_neg_elbo=val["neg_elbo"].item(), val_reconstruction=val["reconstruction"].item(),
                  val_kl=val["kl"].item())  # fmt: skip
    improved = record["val_neg_elbo"] < run.best
    run.best = min(run.best, record["val_neg_elbo"])
    if not run.rank.main:
        return
    state = {
        "model_config": run.model.cfg.to_dict(),
        "model": run.model.state_dict(),
        "train_config": asdict(run.cfg),
        "dataset": run.spec,
        "epoch": epoch + 1,
        "optimizer": run.optimizer.state_dict(),
        "rng": {"noise": run.noise.get_state(), "torch": torch.get_rng_state()},
        "metrics": {"val_neg_elbo": record["val_neg_elbo"], "best_val_neg_elbo": run.best,
                    "test_neg_elbo": None, "train_neg_elbo": record["neg_elbo"]},
    }  # fmt: skip
    save_checkpoint(run.out / "checkpoint.pt", state)
    if improved:
        save_checkpoint(run.out / "best.pt", state)
    with (run.out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    write(meter, f"epoch {epoch + 1:3d}/{run.cfg.epochs}  loss {record['loss']:8.3f}  recon "
          f"{record['reconstruction']:8.3f}  kl {record['kl']:7.3f}  val neg-elbo {record['val_neg_elbo']:8.3f}"
          f"{' *' if improved else '  '}  {record['images_per_s']:7.0f} img/s", run.log)  # fmt: skip


def finish(out: Path, splits: Splits, report: bool, log: TextIO) -> dict:
    """Score best.pt on the test split, store the figure in it (export copies it) and draw the report."""
    model, ckpt = load_model(out / "best.pt")
    cfg = TrainConfig.from_dict(ckpt["train_config"])
    test = elbo_terms(model, splits.test, seed=cfg.seed, sample=cfg.estimator != "deterministic")
    ckpt["metrics"]["test_neg_elbo"] = test["neg_elbo"].item()
    save_checkpoint(out / "best.pt", ckpt)
    metrics = ckpt["metrics"]
    print(f"best epoch {ckpt['epoch']}: val neg-elbo {metrics['val_neg_elbo']:.3f}, test neg-elbo "
          f"{metrics['test_neg_elbo']:.3f} nats/image -> {out / 'best.pt'}", file=log, flush=True)  # fmt: skip
    if report:
        from .report import write_report

        write_report(model, splits, read_metrics(out / "metrics.jsonl"), out / "report")
        print(f"report: {out / 'report'}", file=log, flush=True)
    return metrics
