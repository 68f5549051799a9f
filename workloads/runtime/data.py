"""Training data: synthetic or from files, with a resumable, rank-sharded order.

Exact resume needs the data position to be part of the checkpoint and the
order to be a pure function of (seed, epoch). So:

* every dataset here is index-deterministic: sample i is the same tensor in
  any process, any worker, any run;
* ResumableSampler draws each epoch's permutation from its own generator
  seeded with seed + epoch (never from the global RNG), gives rank r every
  world_size-th index, and can start mid-epoch;
* the DataLoader gets its own `generator` too, because without one each new
  iterator draws its base seed from the global RNG, which shifts every later
  random draw and makes a resumed run diverge.

File formats (`--data DIR`):

* transformer: `*.bin` files of little-endian uint16 token ids (the nanoGPT
  format), or `*.txt` files read as UTF-8 bytes (token = byte, vocab >= 256).
  Files are concatenated in name order and cut into consecutive windows of
  seq_len + 1 tokens (inputs and next-token targets).
* mlp: `*.csv` files, no header, one sample per line: in_features floats and
  then the integer class label; blank lines and lines starting with `#` are
  skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .common import UsageError
from .models import MLPConfig, ModelConfig, TransformerConfig

Batch = tuple[torch.Tensor, torch.Tensor]


def _sample_generator(seed: int, index: int) -> torch.Generator:
    # A distinct, reproducible stream per (seed, sample).
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


class SyntheticTokens(Dataset[Batch]):
    """Arithmetic token sequences with 10% noise: learnable, but not trivially.

    Sample i starts at a random token and steps by a random stride (1-7)
    modulo the vocabulary; the model has to infer the stride from context.
    """

    def __init__(self, config: TransformerConfig, size: int, seed: int) -> None:
        self.config, self.size, self.seed = config, size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Batch:
        gen = _sample_generator(self.seed, index)
        vocab, length = self.config.vocab_size, self.config.seq_len + 1
        start = torch.randint(vocab, (1,), generator=gen)
        stride = torch.randint(1, 8, (1,), generator=gen)
        tokens = (start + stride * torch.arange(length)) % vocab
        noise = torch.rand(length, generator=gen) < 0.1
        tokens = torch.where(noise, torch.randint(vocab, (length,), generator=gen), tokens)
        return tokens[:-1], tokens[1:]


class SyntheticClusters(Dataset[Batch]):
    """Gaussian clusters, one per class, around centers fixed by the seed.

    Centers lie ~3 noise standard deviations apart whatever in_features is, so
    the classes overlap a little and the loss does not collapse to zero.
    """

    def __init__(self, config: MLPConfig, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        scale = 3.0 / math.sqrt(2 * config.in_features)
        self.centers = scale * torch.randn(
            config.classes, config.in_features, generator=torch.Generator().manual_seed(seed)
        )

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Batch:
        gen = _sample_generator(self.seed, index)
        label = torch.randint(self.centers.shape[0], (), generator=gen)
        features = self.centers[label] + torch.randn(self.centers.shape[1], generator=gen)
        return features, label


class TokenFileDataset(Dataset[Batch]):
    """Consecutive (seq_len + 1)-token windows over concatenated token files."""

    def __init__(self, config: TransformerConfig, directory: Path) -> None:
        files = sorted(directory.glob("*.bin")) + sorted(directory.glob("*.txt"))
        if not files:
            raise UsageError(f"--data {directory}: no *.bin or *.txt files found")
        parts = []
        for path in files:
            raw = bytearray(path.read_bytes())
            if not raw:
                continue
            if path.suffix == ".bin":
                if len(raw) % 2:
                    raise UsageError(f"{path}: odd size; *.bin holds uint16 token ids")
                parts.append(torch.frombuffer(raw, dtype=torch.uint16).to(torch.int64))
            else:
                parts.append(torch.frombuffer(raw, dtype=torch.uint8).to(torch.int64))
        self.tokens = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
        if self.tokens.numel() and int(self.tokens.max()) >= config.vocab_size:
            raise UsageError(
                f"--data {directory}: token id {int(self.tokens.max())} does not fit "
                f"vocab_size {config.vocab_size} (raise --vocab-size)"
            )
        self.seq_len = config.seq_len
        self.size = max(0, (self.tokens.numel() - 1) // self.seq_len)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Batch:
        window = self.tokens[index * self.seq_len : (index + 1) * self.seq_len + 1]
        return window[:-1], window[1:]


class CsvDataset(Dataset[Batch]):
    """All `*.csv` rows in memory: features float32, label int64."""

    def __init__(self, config: MLPConfig, directory: Path) -> None:
        files = sorted(directory.glob("*.csv"))
        if not files:
            raise UsageError(f"--data {directory}: no *.csv files found")
        rows: list[list[float]] = []
        labels: list[int] = []
        width = config.in_features + 1
        for path in files:
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                where = f"{path}:{number}"
                cells = line.split(",")
                if len(cells) != width:
                    raise UsageError(
                        f"{where}: {len(cells)} columns, expected {width} "
                        f"({config.in_features} features + label; see --in-features)"
                    )
                try:
                    rows.append([float(c) for c in cells[:-1]])
                    label = int(cells[-1])
                except ValueError as exc:
                    raise UsageError(f"{where}: {exc}") from None
                if not 0 <= label < config.classes:
                    raise UsageError(f"{where}: label {label} not in [0, {config.classes})")
                labels.append(label)
        self.features = torch.tensor(rows, dtype=torch.float32)
        self.labels = torch.tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Batch:
        return self.features[index], self.labels[index]


def make_dataset(
    config: ModelConfig, data: str, seed: int, synthetic_samples: int
) -> Dataset[Batch]:
    if data == "synthetic":
        if isinstance(config, TransformerConfig):
            return SyntheticTokens(config, synthetic_samples, seed)
        return SyntheticClusters(config, synthetic_samples, seed)
    directory = Path(data)
    if not directory.is_dir():
        raise UsageError(f"--data must be 'synthetic' or a directory; {data} is neither")
    if isinstance(config, TransformerConfig):
        return TokenFileDataset(config, directory)
    return CsvDataset(config, directory)


class ResumableSampler(Sampler[int]):
    """This rank's share of an epoch's permutation, from any position onwards."""

    def __init__(self, size: int, rank: int, world_size: int, seed: int) -> None:
        self.size, self.rank, self.world_size, self.seed = size, rank, world_size, seed
        self.per_rank = size // world_size  # the tail that does not divide is dropped
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(
            self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        )
        mine = order[self.rank : self.per_rank * self.world_size : self.world_size]
        return iter(mine[self.start :].tolist())

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


class TrainData:
    """Batches with their position: (epoch, batches of that epoch consumed)."""

    def __init__(
        self,
        dataset: Dataset[Batch],
        batch_size: int,
        *,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        size = len(dataset)  # type: ignore[arg-type]
        self.sampler = ResumableSampler(size, rank, world_size, seed)
        if self.sampler.per_rank < batch_size:
            raise UsageError(
                f"the dataset has {size} samples ({self.sampler.per_rank} per rank across "
                f"{world_size} ranks), fewer than --batch-size {batch_size}"
            )
        self.batch_size = batch_size
        self.batches_per_epoch = self.sampler.per_rank // batch_size
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed),
        )

    def batches(self, epoch: int, consumed: int) -> Iterator[tuple[int, int, Batch]]:
        """Yield (epoch, consumed_after_this_batch, batch) forever from a position."""
        while True:
            self.sampler.set_position(epoch, consumed * self.batch_size)
            for batch in self.loader:
                consumed += 1
                yield epoch, consumed, batch
            epoch, consumed = epoch + 1, 0
