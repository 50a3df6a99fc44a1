"""Mixed precision: ``train.precision`` picks the autocast dtype of training steps.

- ``auto``: bf16 on a CUDA device that has it (fp16 with a gradient scaler on older GPUs),
  float32 on CPU, so that a CPU run is bitwise reproducible;
- ``bf16`` / ``fp16``: autocast to that dtype on any device. ``bf16`` on CPU runs the same
  autocast code path as CUDA (tests use it to catch an op or dtype mix a GPU kernel refuses);
- ``fp32``: no autocast.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    if precision != "auto":
        return DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


class Precision:
    def __init__(self, device: torch.device, precision: str = "auto", loss_scaling: bool = True):
        self.device_type = device.type
        self.dtype = autocast_dtype(device, precision)
        scaled = loss_scaling and self.dtype == torch.float16 and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=scaled)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimiser step, with loss scaling when fp16 needs it."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state)
