"""The two reference models, their size presets, and the export format.

train.py builds a model from a config and exports it; serve.py and batch.py
load the export. The export directory holds exactly two files:

    config.json   {"format_version": 1, "model": "transformer"|"mlp",
                   "config": {...the dataclass fields...}, ...provenance}
    model.pt      the state dict, tensors only: torch.load(weights_only=True)

No pickled classes or code: an export can be loaded by a newer runtime and
cannot run code on the server that loads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812 (the universal alias)
from torch import nn

from .common import UsageError, atomic_output, atomic_write_json
from .contract import EXPORT_CONFIG_FILE, EXPORT_FORMAT_VERSION, EXPORT_WEIGHTS_FILE


@dataclass(frozen=True)
class TransformerConfig:
    """A GPT-style decoder-only language model (pre-LayerNorm, tied embeddings)."""

    kind: ClassVar[str] = "transformer"
    vocab_size: int = 256
    seq_len: int = 64
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 0  # 0 means 4 * d_model

    def __post_init__(self) -> None:
        for field in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.d_ff == 0:
            object.__setattr__(self, "d_ff", 4 * self.d_model)

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), for MFU.

        6 * N for the matmul weights N (every layer's qkv, output projection
        and MLP, plus the vocabulary projection; embedding lookups are free)
        plus 12 * n_layers * d_model * seq_len for the attention scores and the
        weighted sum (the PaLM paper's formula; causal masking not discounted).
        """
        per_layer = 4 * self.d_model**2 + 2 * self.d_model * self.d_ff
        matmul_params = self.n_layers * per_layer + self.vocab_size * self.d_model
        return 6 * matmul_params + 12 * self.n_layers * self.d_model * self.seq_len


@dataclass(frozen=True)
class MLPConfig:
    """A ReLU multi-layer perceptron classifier over fixed-length feature vectors."""

    kind: ClassVar[str] = "mlp"
    in_features: int = 16
    hidden: int = 32
    depth: int = 2  # hidden layers
    classes: int = 4

    def __post_init__(self) -> None:
        for field in ("in_features", "hidden", "depth", "classes"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")


ModelConfig = TransformerConfig | MLPConfig
CONFIG_TYPES: dict[str, type[TransformerConfig] | type[MLPConfig]] = {
    "transformer": TransformerConfig,
    "mlp": MLPConfig,
}

# Named sizes. `tiny` is what the tests train in seconds on a CPU; `1b` is the
# GPU throughput configuration (head_dim 128 for the flash-attention kernels,
# vocabulary padded to a multiple of 128 for the tensor cores).
PRESETS: dict[str, dict[str, ModelConfig]] = {
    "transformer": {
        "tiny": TransformerConfig(),
        "small": TransformerConfig(vocab_size=1024, seq_len=256, d_model=256, n_layers=4),
        "124m": TransformerConfig(
            vocab_size=50304, seq_len=1024, d_model=768, n_layers=12, n_heads=12
        ),
        "1b": TransformerConfig(
            vocab_size=50304, seq_len=2048, d_model=2048, n_layers=20, n_heads=16
        ),
    },
    "mlp": {
        "tiny": MLPConfig(),
        "mnist": MLPConfig(in_features=784, hidden=2048, depth=2, classes=10),
    },
}


def config_from_dict(kind: str, values: dict[str, Any]) -> ModelConfig:
    """Rebuild a config from JSON, naming unknown fields or bad values."""
    if kind not in CONFIG_TYPES:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(CONFIG_TYPES)}")
    cls = CONFIG_TYPES[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {kind} config fields: {', '.join(unknown)}")
    return cls(**values)


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        head_dim = width // self.n_heads
        qkv = self.qkv(x).view(batch, seq, 3, self.n_heads, head_dim).permute(2, 0, 3, 1, 4)
        # SDPA dispatches to flash attention on GPU (bf16, head_dim <= 256).
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, width))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.out = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class TransformerLM(nn.Module):
    """Token ids [batch, seq] -> next-token logits.

    Causal attention means the logits at position t depend only on tokens
    <= t, so right-padded sequences of different lengths can share a batch:
    serving pads on the right and reads each row at its own last position.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied: saves V*d parameters
        self.apply(self._init_weights)
        # GPT-2 scaling: residual-branch outputs shrink with depth.
        for name, param in self.named_parameters():
            if name.endswith(("attn.proj.weight", "out.weight")):
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [batch, seq, vocab], or [batch, vocab] at positions `last`.

        `last` (int64 [batch]) avoids the vocabulary projection of every
        position when only the next token after each prompt is wanted.
        """
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        if last is not None:
            x = x[torch.arange(x.shape[0], device=x.device), last]
        return self.head(self.ln_f(x))


class MLPClassifier(nn.Module):
    """Features [batch, in_features] -> class logits [batch, classes]."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_features
        for _ in range(config.depth):
            layers += [nn.Linear(width, config.hidden), nn.ReLU()]
            width = config.hidden
        layers.append(nn.Linear(width, config.classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_model(config: ModelConfig) -> TransformerLM | MLPClassifier:
    if isinstance(config, TransformerConfig):
        return TransformerLM(config)
    return MLPClassifier(config)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (the tied embedding counted once)."""
    return sum(p.numel() for p in model.parameters())


def export_model(
    model: nn.Module, config: ModelConfig, export_dir: Path, extra: dict[str, Any]
) -> None:
    """Write the export; config.json goes last, so its presence means complete."""
    export_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(export_dir / EXPORT_WEIGHTS_FILE) as handle:
        torch.save(state, handle)
    meta = {
        "format_version": EXPORT_FORMAT_VERSION,
        "model": config.kind,
        "config": config_to_dict(config),
        "torch_version": torch.__version__,
        **extra,
    }
    atomic_write_json(export_dir / EXPORT_CONFIG_FILE, meta)


def read_export_config(model_dir: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """Parse and validate config.json; every problem is a UsageError naming the file."""
    path = model_dir / EXPORT_CONFIG_FILE
    if not model_dir.is_dir():
        raise UsageError(f"model directory {model_dir} does not exist")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} is missing: not an exported model directory") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != EXPORT_FORMAT_VERSION:
        raise UsageError(
            f"{path}: format_version must be {EXPORT_FORMAT_VERSION}, "
            f"got {meta.get('format_version') if isinstance(meta, dict) else meta!r}"
        )
    try:
        config = config_from_dict(str(meta.get("model")), dict(meta.get("config") or {}))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{path}: {exc}") from None
    return config, meta


def load_model(
    model_dir: Path, device: torch.device
) -> tuple[ModelConfig, TransformerLM | MLPClassifier]:
    """Load an export for inference (eval mode, no gradients, on `device`)."""
    config, _ = read_export_config(model_dir)
    weights = model_dir / EXPORT_WEIGHTS_FILE
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{weights} is missing") from None
    except Exception as exc:  # torch raises many types for a bad file
        raise UsageError(f"{weights} cannot be loaded: {exc}") from None
    model = build_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UsageError(f"{weights} does not match {EXPORT_CONFIG_FILE}: {exc}") from None
    model.requires_grad_(False)
    return config, model.to(device).eval()
