"""Turning requests into tensors and tensors into answers, for serve and batch.

A Predictor wraps a loaded export. Its two halves run in different places:

* `parse_v2` / `parse_instances` validate one request's input and build a
  Sample (cheap; the server calls them on the event loop, so a malformed
  request is rejected before it takes a queue slot);
* `predict` runs one forward pass over many Samples (the server calls it in
  its inference thread with a dynamic batch; batch.py with a chunk of records)
  and splits the outputs back per Sample.

Inputs and outputs (the `/v2/models/{name}` metadata says the same):

    mlp          input  "input"      FP32  [N, in_features]
                 output "logits"     FP32  [N, classes]
                        "label"      INT64 [N]          argmax of the logits
    transformer  input  "input"      INT64 [N, T]       token ids, 1 <= T <= seq_len
                 output "logits"     FP32  [N, vocab]   next-token logits
                        "next_token" INT64 [N]          argmax of the logits

v1 instances are rows: a list of in_features numbers (mlp) or of token ids
(transformer; rows of one request may differ in length). v2 input data may
also arrive as raw little-endian bytes (the binary tensor data extension):
serve.py wraps them in RawData. FP32 inputs must be finite and within FP32
range; JSON booleans are not numbers here.
"""

from __future__ import annotations

import array
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .device import autocast
from .models import MLPConfig, ModelConfig, TransformerConfig, load_model

INPUT_NAME = "input"


class InputError(ValueError):
    """The request is wrong (HTTP 400 / a bad record); the message says how."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class Sample:
    """One request's rows: inputs [rows, ...] and, for token rows, their lengths.

    MLP inputs are kept flat, [rows * in_features] with `count` rows: the
    forward pass shapes the whole batch at once, so parsing a request makes
    no reshaping torch call on the event loop.
    """

    inputs: torch.Tensor
    lengths: torch.Tensor | None = None
    count: int | None = None

    @property
    def rows(self) -> int:
        return self.count if self.count is not None else int(self.inputs.shape[0])


Outputs = dict[str, torch.Tensor]

# v2 datatypes the models take, as raw little-endian bytes (and array typecodes).
RAW_DTYPES = {"FP32": torch.float32, "INT64": torch.int64, "INT32": torch.int32}
RAW_TYPECODES = {"FP32": "f", "INT64": "q", "INT32": "i"}


@dataclass(frozen=True)
class RawData:
    """A v2 input's data sent as raw bytes (binary tensor data extension)."""

    data: bytes | bytearray | memoryview


def _has_bool(data: list[Any]) -> bool:
    """Whether a (nested) list holds a JSON boolean; C-speed scan of each level."""
    types = set(map(type, data))
    if bool in types:
        return True
    return list in types and any(_has_bool(item) for item in data if isinstance(item, list))


def _to_tensor(
    data: Any, where: str, integer: bool, may_hold_booleans: bool = True
) -> torch.Tensor:
    """JSON numbers (flat or nested lists) to a tensor, or an InputError naming `where`.

    Flat lists, the common case (v2 `data`, v1 feature rows), go through
    array.array and torch.frombuffer: about 6x faster than torch.tensor(list),
    which matters when a request is 784 floats and a forward pass is 0.2 ms.
    JSON booleans are rejected (array.array would take them as 1 and 0);
    `may_hold_booleans=False` skips that scan when the caller knows the raw
    JSON holds no `true`/`false` (serve.py checks the request bytes).
    """
    if not isinstance(data, list):
        raise InputError(f"{where} must be a list of numbers, got {type(data).__name__}")
    kind = "integers" if integer else "numbers"
    if may_hold_booleans and _has_bool(data):
        raise InputError(f"{where} holds JSON booleans (true/false); it must hold only {kind}")
    try:
        flat = array.array("q" if integer else "f", data)
    except TypeError:
        pass  # nested rows, or something that is not a number: the slow path decides
    except OverflowError:
        raise InputError(f"{where} holds a value out of range") from None
    else:
        if not flat:
            return torch.empty(0, dtype=torch.int64 if integer else torch.float32)
        if not integer and (index := _first_non_finite(flat)) is not None:
            raise InputError(_not_fp32(where, index, flat[index]))
        return torch.frombuffer(flat, dtype=torch.int64 if integer else torch.float32)
    try:
        tensor = torch.tensor(data)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise InputError(f"{where} must hold only {kind} in equal-length rows: {exc}") from None
    if tensor.dtype == torch.bool or (integer and tensor.dtype.is_floating_point):
        raise InputError(f"{where} must hold {kind}, got {tensor.dtype}".replace("torch.", ""))
    if not integer:
        tensor = tensor.to(torch.float32)
        check_finite(tensor, where)
    return tensor


def _first_non_finite(flat: array.array[float]) -> int | None:
    """Index of the first NaN/Inf in an array("f"), without a torch call.

    A JSON number beyond the FP32 range becomes inf in the array; raw bytes
    may hold anything. The sum (in double precision, which no float32 values
    can overflow) is finite exactly when every value is: one C-speed pass.
    The request path avoids torch calls on the event loop: each may release
    the GIL, and taking it back behind the inference thread can cost more
    than the call itself.
    """
    if math.isfinite(sum(flat)):
        return None
    return next(i for i, value in enumerate(flat) if not math.isfinite(value))


def _not_fp32(where: str, index: int | list[int], value: float) -> str:
    return (
        f"{where}: value at index {index} is {value} as FP32; inputs must be finite numbers "
        f"within the FP32 range (|x| <= 3.4028235e38)"
    )


def _from_bytes(raw: RawData, datatype: str, count: int, where: str) -> torch.Tensor:
    """Raw little-endian tensor bytes to a 1-D tensor of `count` elements."""
    values = array.array(RAW_TYPECODES[datatype])
    if len(raw.data) != count * values.itemsize:
        raise InputError(
            f"{where} has {len(raw.data)} bytes of binary data but {count} {datatype} "
            f"values need {count * values.itemsize}"
        )
    if count == 0:
        return torch.empty(0, dtype=RAW_DTYPES[datatype])
    values.frombytes(raw.data)  # a copy: the request body is immutable
    if sys.byteorder != "little":  # the extension's bytes are little-endian
        values.byteswap()
    if datatype == "FP32" and (index := _first_non_finite(values)) is not None:
        raise InputError(_not_fp32(where, index, values[index]))
    return torch.frombuffer(values, dtype=RAW_DTYPES[datatype])


def check_finite(inputs: torch.Tensor, where: str) -> None:
    """FP32 inputs must be finite (nested JSON lists, converted by torch)."""
    if not inputs.is_floating_point() or inputs.numel() == 0:
        return
    # min and max propagate NaN and show +-inf: 4x cheaper than isfinite().all().
    low, high = torch.aminmax(inputs)
    if not (math.isfinite(low.item()) and math.isfinite(high.item())):
        position = (~torch.isfinite(inputs)).nonzero()[0].tolist()
        index = position[0] if len(position) == 1 else position
        raise InputError(_not_fp32(where, index, inputs[tuple(position)].item()))


class Predictor:
    """Validation and a batched forward pass for one loaded model."""

    config: ModelConfig
    input_datatypes: tuple[str, ...]

    def __init__(self, model: torch.nn.Module, config: ModelConfig, device: torch.device):
        self.model, self.config, self.device = model, config, device

    @staticmethod
    def load(model_dir: Path, device: torch.device) -> Predictor:
        config, model = load_model(model_dir, device)
        cls = LanguageModelPredictor if isinstance(config, TransformerConfig) else MLPPredictor
        return cls(model, config, device)

    # -- metadata -----------------------------------------------------------------
    def input_spec(self) -> TensorSpec:
        raise NotImplementedError

    def output_specs(self) -> list[TensorSpec]:
        raise NotImplementedError

    # -- parsing (event loop) -------------------------------------------------------
    def parse_v2(self, inputs: Any, may_hold_booleans: bool = True) -> Sample:
        """Validate the `inputs` field of a v2 infer request.

        An input's `data` is JSON numbers, or RawData (binary extension).
        """
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise InputError(
                f"'inputs' must be a list with one tensor object (this model has one "
                f"input, {INPUT_NAME!r})"
            )
        tensor = inputs[0]
        for field in ("name", "shape", "datatype", "data"):
            if field not in tensor:
                raise InputError(f"inputs[0] is missing the field {field!r}")
        if tensor["name"] != INPUT_NAME:
            raise InputError(
                f"unknown input {tensor['name']!r}; this model's input is {INPUT_NAME!r}"
            )
        if tensor["datatype"] not in self.input_datatypes:
            raise InputError(
                f"input {INPUT_NAME!r} has datatype {tensor['datatype']!r}; this model takes "
                f"{' or '.join(self.input_datatypes)}"
            )
        shape = tensor["shape"]
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            raise InputError(
                f"input {INPUT_NAME!r} shape must be two positive integers "
                f"{self.input_spec().shape}, got {shape!r}"
            )
        where = f"input {INPUT_NAME!r} data"
        if isinstance(tensor["data"], RawData):
            values = _from_bytes(tensor["data"], tensor["datatype"], math.prod(shape), where)
        else:
            values = _to_tensor(tensor["data"], where, self._integer, may_hold_booleans)
        if values.numel() != math.prod(shape):
            raise InputError(
                f"input {INPUT_NAME!r} has {values.numel()} values but shape {shape} "
                f"needs {math.prod(shape)}"
            )
        return self._sample_v2(values, shape, f"input {INPUT_NAME!r}")

    def parse_instances(self, instances: Any, may_hold_booleans: bool = True) -> Sample:
        """Validate the `instances` field of a v1 predict request (a list of rows)."""
        if not isinstance(instances, list) or not instances:
            raise InputError("'instances' must be a non-empty list of rows")
        rows = []
        for i, row in enumerate(instances):
            tensor = _to_tensor(row, f"instances[{i}]", self._integer, may_hold_booleans)
            rows.append(tensor if tensor.dim() == 1 else tensor.reshape(-1))
        return self._sample_rows(rows, "instances")

    _integer = False

    def _sample(self, rows: list[torch.Tensor], where: str) -> Sample:
        """A Sample from 2-D tensors of rows."""
        raise NotImplementedError

    def _sample_v2(self, values: torch.Tensor, shape: list[int], where: str) -> Sample:
        """A Sample from a v2 input's values (flat or nested) and its checked shape."""
        return self._sample([values.reshape(shape)], where)

    def _sample_rows(self, rows: list[torch.Tensor], where: str) -> Sample:
        """A Sample from v1 instances, each a 1-D row."""
        return self._sample([row.reshape(1, -1) for row in rows], where)

    def example(self, rows: int) -> Sample:
        """A valid input of `rows` rows, for warm-up passes."""
        raise NotImplementedError

    # -- inference (worker thread) --------------------------------------------------
    def predict(self, samples: list[Sample]) -> list[Outputs]:
        """One forward pass over all samples; outputs split back per sample (CPU)."""
        cpu = self.predict_batch(samples)
        sizes = [s.rows for s in samples]
        parts = {name: t.split(sizes) for name, t in cpu.items()}
        return [{name: parts[name][i] for name in parts} for i in range(len(samples))]

    def predict_batch(self, samples: list[Sample]) -> Outputs:
        """One forward pass over all samples; the outputs of all their rows (CPU, fp32)."""
        with torch.inference_mode(), autocast(self.device):
            outputs = self._forward(samples)
        return {name: _on_cpu(t) for name, t in outputs.items()}

    def _forward(self, samples: list[Sample]) -> Outputs:
        raise NotImplementedError


def _on_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """On the CPU, floating outputs as FP32; no call when already so.

    Every torch call releases the GIL and must take it back, which behind
    serve.py's busy event loop costs far more than a no-op call itself.
    """
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        tensor = tensor.float()
    return tensor if tensor.device.type == "cpu" else tensor.cpu()


class MLPPredictor(Predictor):
    config: MLPConfig
    input_datatypes = ("FP32",)

    def input_spec(self) -> TensorSpec:
        return TensorSpec(INPUT_NAME, "FP32", (-1, self.config.in_features))

    def output_specs(self) -> list[TensorSpec]:
        return [
            TensorSpec("logits", "FP32", (-1, self.config.classes)),
            TensorSpec("label", "INT64", (-1,)),
        ]

    def _check_width(self, features: int, where: str) -> None:
        width = self.config.in_features
        if features != width:
            raise InputError(
                f"{where}: rows have {features} features; this model expects "
                f"{width} (shape [-1, {width}])"
            )

    def _sample(self, rows: list[torch.Tensor], where: str) -> Sample:
        for row in rows:
            self._check_width(row.shape[1], where)
        return self._sample_rows([row.reshape(-1) for row in rows], where)

    def _sample_v2(self, values: torch.Tensor, shape: list[int], where: str) -> Sample:
        self._check_width(shape[1], where)
        flat = values if values.dim() == 1 else values.reshape(-1)
        return Sample(flat if flat.dtype == torch.float32 else flat.float(), count=shape[0])

    def _sample_rows(self, rows: list[torch.Tensor], where: str) -> Sample:
        for row in rows:
            self._check_width(row.shape[0], where)
        flat = rows[0] if len(rows) == 1 else torch.cat(rows)  # skip a copy per request
        return Sample(flat if flat.dtype == torch.float32 else flat.float(), count=len(rows))

    def example(self, rows: int) -> Sample:
        return Sample(torch.zeros(rows * self.config.in_features), count=rows)

    def _forward(self, samples: list[Sample]) -> Outputs:
        flat = torch.cat([s.inputs.reshape(-1) if s.count is None else s.inputs for s in samples])
        inputs = flat.view(-1, self.config.in_features)
        if inputs.device != self.device:
            inputs = inputs.to(self.device, non_blocking=True)
        logits = self.model(inputs)
        return {"logits": logits, "label": logits.argmax(dim=-1)}


class LanguageModelPredictor(Predictor):
    config: TransformerConfig
    input_datatypes = ("INT64", "INT32")
    _integer = True

    def input_spec(self) -> TensorSpec:
        return TensorSpec(INPUT_NAME, "INT64", (-1, -1))

    def output_specs(self) -> list[TensorSpec]:
        return [
            TensorSpec("logits", "FP32", (-1, self.config.vocab_size)),
            TensorSpec("next_token", "INT64", (-1,)),
        ]

    def _sample(self, rows: list[torch.Tensor], where: str) -> Sample:
        limit, vocab = self.config.seq_len, self.config.vocab_size
        lengths = torch.tensor([r.shape[1] for r in rows for _ in range(r.shape[0])])
        for row in rows:
            if not 1 <= row.shape[1] <= limit:
                raise InputError(
                    f"{where}: sequences must have 1 to {limit} tokens, got {row.shape[1]}"
                )
            if row.min() < 0 or row.max() >= vocab:
                raise InputError(f"{where}: token ids must be in [0, {vocab})")
        width = int(lengths.max())
        padded = torch.zeros(int(lengths.numel()), width, dtype=torch.int64)
        start = 0
        for row in rows:
            padded[start : start + row.shape[0], : row.shape[1]] = row
            start += row.shape[0]
        return Sample(padded, lengths)

    def example(self, rows: int) -> Sample:
        return Sample(
            torch.zeros(rows, self.config.seq_len, dtype=torch.int64),
            torch.full((rows,), self.config.seq_len),
        )

    def _forward(self, samples: list[Sample]) -> Outputs:
        # Right-pad to the longest row; causal attention keeps padding out of
        # every real position, and each row is read at its own last token.
        width = max(s.inputs.shape[1] for s in samples)
        tokens = torch.cat(
            [torch.nn.functional.pad(s.inputs, (0, width - s.inputs.shape[1])) for s in samples]
        ).to(self.device, non_blocking=True)
        lengths = torch.cat([s.lengths for s in samples if s.lengths is not None])
        logits = self.model(tokens, last=(lengths - 1).to(self.device))
        return {"logits": logits, "next_token": logits.argmax(dim=-1)}


def output_rows(outputs: Outputs) -> list[dict[str, Any]]:
    """Per-row dicts {output name: value}: v1 predictions and batch.py records."""
    columns = {name: t.tolist() for name, t in outputs.items()}
    count = len(next(iter(columns.values())))
    return [{name: values[i] for name, values in columns.items()} for i in range(count)]
