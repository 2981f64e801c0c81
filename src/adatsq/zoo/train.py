"""Flow-matching training of the embedded digit generators.

Reproduce the shipped ``flux-digits`` weights with::

    python -m adatsq.zoo.train flux-digits --out runs/train/flux-digits

Training is seeded and resumable: the batch of step ``k`` is drawn from ``rng(seed, k)`` so that
a resumed run sees exactly the batches an uninterrupted run would. Checkpoints (model, EMA and
AdamW state, all safetensors) are written every ``--checkpoint-every`` steps to a temp file and
renamed. ``--export`` copies the EMA weights into the package's ``zoo/weights``.

``--init WEIGHTS`` starts a run (not a resume) from trained weights, e.g. the shipped ones, with a
fresh optimizer and learning-rate schedule: training on. The export then records both runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from adatsq.files import atomic_path
from adatsq.zoo import registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (see BENCHMARKS.md for the ablations behind them)."""

    steps: int = 16000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 300
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    seed: int = 0
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.steps <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError("steps, batch_size and lr must be positive")
        if not 0.0 <= self.cond_dropout < 1.0 or not 0.0 < self.ema_decay < 1.0:
            raise ValueError("cond_dropout must be in [0, 1) and ema_decay in (0, 1)")


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def _optimizer_state(opt: torch.optim.AdamW, names: list[str]) -> dict[str, torch.Tensor]:
    flat = {}
    params = opt.param_groups[0]["params"]
    for name, p in zip(names, params):
        st = opt.state.get(p)
        if st:
            flat[f"exp_avg.{name}"] = st["exp_avg"]
            flat[f"exp_avg_sq.{name}"] = st["exp_avg_sq"]
            flat[f"step.{name}"] = st["step"].reshape(1)
    return flat


def _load_optimizer_state(opt: torch.optim.AdamW, names: list[str], flat: dict[str, torch.Tensor]):
    params = opt.param_groups[0]["params"]
    for name, p in zip(names, params):
        if f"exp_avg.{name}" in flat:
            opt.state[p] = {"exp_avg": flat[f"exp_avg.{name}"].clone(),
                            "exp_avg_sq": flat[f"exp_avg_sq.{name}"].clone(),
                            "step": flat[f"step.{name}"].reshape(()).clone()}


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]):
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def train(name: str, out: Path, cfg: TrainConfig, checkpoint_every: int = 500,
          threads: int | None = None, init: Path | None = None) -> Path:
    """Trains zoo model ``name``; resumes from ``out/checkpoint.safetensors`` if present.

    ``init``: weights (safetensors) the run starts from instead of a random initialisation; a
    resume ignores it (the checkpoint already holds the trained-on weights).
    """
    entry = registry.get(name)
    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = entry.build_model()
    ema = entry.build_model()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.99))
    table = entry.prompt_table(out / "prompt_table.safetensors")
    start = 0
    ckpt = out / "checkpoint.safetensors"
    if ckpt.exists():
        flat = load_file(str(ckpt))
        model.load_state_dict({k[6:]: v for k, v in flat.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in flat.items() if k.startswith("ema.")})
        opt_state = {k[4:]: v for k, v in flat.items() if k.startswith("opt.")}
        _load_optimizer_state(opt, names, opt_state)
        start = int(flat["progress.step"].item())
        log.info("resumed %s at step %d", name, start)
    elif init is not None:
        state = load_file(str(init))
        model.load_state_dict(state)
        ema.load_state_dict(state)
        log.info("%s starts from %s", name, init)
    history_path = out / "history.jsonl"
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {name}",
               mininterval=5.0)
    before = 0.0  # wall time of the run before this resume
    if start and history_path.exists():
        records = [json.loads(line) for line in history_path.read_text().splitlines() if line]
        before = records[-1]["elapsed"] if records else 0.0
    t0 = time.time() - before
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step])
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        loss = entry.training_loss(model, rng, gen, cfg.batch_size, cfg.cond_dropout, table)
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        done = step + 1
        if done % 50 == 0:
            with open(history_path, "a") as fh:
                fh.write(json.dumps({"step": done, "loss": loss.item(), "lr": _lr_at(cfg, step),
                                     "elapsed": time.time() - t0}) + "\n")
        if done % checkpoint_every == 0 or done == cfg.steps:
            flat = {f"model.{k}": v for k, v in model.state_dict().items()}
            flat.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
            flat.update({f"opt.{k}": v for k, v in _optimizer_state(opt, names).items()})
            flat["progress.step"] = torch.tensor([done])
            _atomic_save(flat, ckpt, {"config": json.dumps(asdict(cfg))})
    weights = out / "ema.safetensors"
    _atomic_save(dict(ema.state_dict()), weights, {"config": json.dumps(asdict(cfg))})
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("name", help="zoo model to train, e.g. flux-digits")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, help="default: the zoo entry's, else TrainConfig's")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--ema-decay", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--init", type=Path, default=None,
                        help="start from these weights (safetensors, e.g. a copy of the shipped "
                             "ones) with a fresh schedule")
    parser.add_argument("--export", action="store_true", help="copy EMA weights into the package")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    entry = registry.get(args.name)
    given = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "ema_decay", "seed")
             if getattr(args, k) is not None}
    cfg = TrainConfig(**{**entry.training, **given})
    if args.init is not None and not args.init.is_file():
        parser.error(f"--init {args.init}: no such weights file")
    weights = train(args.name, args.out, cfg, args.checkpoint_every, args.threads, args.init)
    if args.export:
        entry.export(weights, cfg, args.out / "history.jsonl", init=args.init)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
