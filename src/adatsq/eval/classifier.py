"""The DigitEval classifier: a tiny CNN on 8x8 grayscale digits in [0, 1].

It plays the part of GenEval's detector-classifier (and of the Inception network of FID): it labels
the slot crops of a scene and its penultimate layer gives the features of the Fréchet distance.
It is trained only on ``scenes.digit_split("train")``, with light augmentation (intensity scaling,
one-pixel shifts, blur, Gaussian noise) so that slightly blurry or noisy generated digits are still
read correctly, and it is shipped inside the package as safetensors plus a JSON card.

Re-create the shipped weights (about 30 s on one core) with::

    python -m adatsq.eval.classifier
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from adatsq.files import atomic_path, write_json
from adatsq.zoo import scenes

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_PATH = WEIGHTS_DIR / "digit_classifier.safetensors"
NUM_CLASSES = 10


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and training recipe of the digit classifier.

    Attributes:
        channels: output channels of the two 3x3 convolutions.
        hidden: width of the penultimate (feature) layer.
        epochs: passes over the training digits.
        batch_size: digits per optimizer step.
        lr: peak AdamW learning rate (cosine decay to 0).
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        noise_std: largest standard deviation of the additive Gaussian noise augmentation.
        seed: seed of initialisation, shuffling and augmentation.
        version: schema version of this config.
    """

    channels: tuple[int, int] = (32, 64)
    hidden: int = 128
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    noise_std: float = 0.08
    seed: int = 0
    version: int = 1

    def __post_init__(self):
        if len(self.channels) != 2 or min(self.channels) < 1:
            raise ValueError(f"channels must be two positive ints, got {self.channels}")
        if self.hidden < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("hidden, epochs and batch_size must be positive")
        if self.lr <= 0 or self.weight_decay < 0 or self.noise_std < 0:
            raise ValueError("lr must be positive; weight_decay and noise_std non-negative")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.version != 1:
            raise ValueError(f"unsupported ClassifierConfig version {self.version}")

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        out = asdict(self)
        out["channels"] = list(self.channels)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ClassifierConfig:
        """Inverse of :meth:`to_dict`; rejects unknown keys."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown ClassifierConfig keys: {sorted(unknown)}")
        data = dict(data)
        if "channels" in data:
            data["channels"] = tuple(data["channels"])
        return cls(**data)


class DigitClassifier(nn.Module):
    """conv3x3 -> conv3x3 -> maxpool -> linear (features) -> linear (10 logits).

    Inputs are (N, 8, 8) or (N, 1, 8, 8) grayscale digits in [0, 1].

    Example:
        >>> model = DigitClassifier(ClassifierConfig())
        >>> model(torch.zeros(2, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        side = scenes.SLOT // 2
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc = nn.Linear(c2 * side * side, config.hidden)
        self.head = nn.Linear(config.hidden, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations (N, hidden), used by the Fréchet distance."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = F.relu(self.conv1(x))  # (N, c1, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, c2, 4, 4)
        return F.relu(self.fc(x.flatten(1)))  # (N, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels (N,) and their softmax probabilities (N,)."""
        probs = self(x).softmax(-1)
        confidence, labels = probs.max(-1)
        return labels, confidence


def augment(images: torch.Tensor, gen: torch.Generator, noise_std: float) -> torch.Tensor:
    """Random shift (<= 1 px), blur, intensity scale (0.6-1.2) and noise, clipped to [0, 1].

    Args:
        images: (N, 8, 8) digits in [0, 1].
        gen: random generator (the only source of randomness).
        noise_std: largest per-image noise standard deviation.

    Returns:
        (N, 8, 8) augmented digits.
    """
    n = images.shape[0]
    padded = F.pad(images, (1, 1, 1, 1))  # (N, 10, 10)
    dy, dx = torch.randint(0, 3, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(8))[:, :, None]  # (N, 8, 1)
    cols = (dx[:, None] + torch.arange(8))[:, None, :]  # (N, 1, 8)
    x = padded[torch.arange(n)[:, None, None], rows, cols]  # (N, 8, 8)
    # A generator's digits are softer than scans: blend a 3x3 box blur into a third of them.
    blurred = F.avg_pool2d(x[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    blend = (torch.rand(n, generator=gen) < 1 / 3).float() * torch.rand(n, generator=gen) * 0.6
    x = torch.lerp(x, blurred, blend[:, None, None])
    x = x * (0.6 + 0.6 * torch.rand(n, 1, 1, generator=gen))
    x = x + torch.randn(x.shape, generator=gen) * noise_std * torch.rand(n, 1, 1, generator=gen)
    return x.clamp(0.0, 1.0)


def train_classifier(config: ClassifierConfig = ClassifierConfig()) -> DigitClassifier:
    """Trains a classifier on the training digits only; deterministic for a given config.

    Example:
        >>> model = train_classifier(ClassifierConfig(epochs=1))  # doctest: +SKIP
    """
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    images, labels = (torch.from_numpy(a) for a in scenes.digit_split("train"))
    model = DigitClassifier(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    total = config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(labels), generator=gen)
        for start in range(0, len(labels), config.batch_size):
            idx = order[start:start + config.batch_size]
            x = augment(images[idx], gen, config.noise_std)
            loss = F.cross_entropy(model(x), labels[idx], label_smoothing=config.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            log.info("epoch %d loss %.4f", epoch + 1, loss.item())
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``images`` (N, 8, 8) in [0, 1] labelled correctly."""
    predicted, _ = model.predict(torch.as_tensor(images, dtype=torch.float32))
    return float((predicted.numpy() == np.asarray(labels)).mean())


def save_classifier(model: DigitClassifier, path: Path, held_out_accuracy: float) -> None:
    """Writes ``path`` (safetensors) and ``path`` with suffix ``.json`` (the model card)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    card = {
        "architecture": "conv3x3(1->c1)-relu-conv3x3(c1->c2)-relu-maxpool2-linear(hidden)-relu-"
                        "linear(10)",
        "config": model.config.to_dict(),
        "train_digits": "scenes.digit_split('train')",
        "held_out_accuracy": held_out_accuracy,
    }
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"config": json.dumps(model.config.to_dict())})
    write_json(card, path.with_suffix(".json"), indent=2)


def load_classifier(path: Path | str | None = None) -> DigitClassifier:
    """The shipped (or given) classifier in eval mode; cached per path.

    Raises:
        FileNotFoundError: if the weights or their JSON card are missing.
        RuntimeError: if the files are corrupt or do not match the recorded architecture.

    Example:
        >>> model = load_classifier()
        >>> labels, confidence = model.predict(torch.zeros(1, 8, 8))
    """
    return _load_classifier(Path(path) if path is not None else WEIGHTS_PATH)


@functools.lru_cache(maxsize=4)
def _load_classifier(path: Path) -> DigitClassifier:
    card_path = path.with_suffix(".json")
    hint = "re-create them with `python -m adatsq.eval.classifier`"
    if not path.is_file() or not card_path.is_file():
        raise FileNotFoundError(f"digit classifier weights missing at {path} (+ .json); {hint}")
    try:
        config = ClassifierConfig.from_dict(json.loads(card_path.read_text())["config"])
        state = load_file(str(path))
        model = DigitClassifier(config)
        model.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as err:
        raise RuntimeError(f"corrupt digit classifier at {path}: {err}; {hint}") from err
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """Trains, reports the held-out accuracy and writes the shipped weights."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    parser.add_argument("--seed", type=int, default=ClassifierConfig.seed)
    parser.add_argument("--epochs", type=int, default=ClassifierConfig.epochs)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    model = train_classifier(ClassifierConfig(seed=args.seed, epochs=args.epochs))
    held_out = accuracy(model, *scenes.digit_split("held_out"))
    train_acc = accuracy(model, *scenes.digit_split("train"))
    log.info("train accuracy %.4f, held-out accuracy %.4f", train_acc, held_out)
    if held_out < 0.95:
        log.error("held-out accuracy %.4f below 0.95; weights not written", held_out)
        return 1
    save_classifier(model, args.out, held_out)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
