"""torch backends of a sentence-transformers BERT folder, without sentence-transformers' loop.

Modes: "fp32"; "bf16-autocast" (weights fp32, matmuls in bf16: AVX-512 BF16 / AMX on CPU);
"bf16" (weights cast to bf16); "fp16" (CUDA only). Pooling always runs in fp32. GPU paths
import lazily and are offered only where torch sees a CUDA device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedstack.inference.batching.packed import PackedEmbedder
from embedstack.inference.engines.hf_tokenizer import HFTokenizer
from embedstack.types import ModelSpec

TorchMode = Literal["fp32", "bf16-autocast", "bf16", "fp16"]
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX)."""
    return any(f in cpu_flags() for f in _BF16_FLAGS)


def cuda_available() -> bool:
    """True where torch sees a CUDA device (torch is imported only where a driver exists)."""
    if not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia")):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchForward:
    """A transformers BertModel + masked mean pooling on one device, in one numeric mode."""

    def __init__(self, model_dir: Path, mode: TorchMode = "fp32", device: str = "cpu") -> None:
        import torch
        from transformers import AutoModel

        if mode == "fp16" and not device.startswith("cuda"):
            raise ValueError("fp16 is offered on CUDA only (CPU fp16 matmuls are slow)")
        model = AutoModel.from_pretrained(
            str(model_dir), attn_implementation="sdpa", local_files_only=True
        ).eval()
        if mode in ("bf16", "fp16"):
            model = model.to(torch.bfloat16 if mode == "bf16" else torch.float16)
        self._model = model.to(device)
        self._torch = torch
        self._device = torch.device(device)
        self._autocast = mode == "bf16-autocast"
        self._staging: dict[str, Any] = {}  # pinned host buffers per input (CUDA only)

    def _to_device(self, array: np.ndarray, slot: str) -> Any:
        """On CUDA, through a reused pinned (page-locked) buffer per input, so the copy is a
        real DMA that does not block the host; a buffer is free again once the previous call
        synced (its `.cpu()` at the end)."""
        torch = self._torch
        host = torch.from_numpy(array)
        if self._device.type != "cuda":
            return host
        buf = self._staging.get(slot)
        if buf is None or buf.numel() < host.numel():
            buf = torch.empty(max(host.numel(), 1 << 16), dtype=host.dtype).pin_memory()
            self._staging[slot] = buf
        staged = buf[: host.numel()].view(host.shape)
        staged.copy_(host)
        return staged.to(self._device, non_blocking=True)

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        torch = self._torch
        dev = self._device
        with torch.inference_mode():
            t_ids, t_mask = self._to_device(ids, "ids"), self._to_device(mask, "mask")
            ctx: Any = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self._autocast)
            with ctx:
                hidden = self._model(input_ids=t_ids, attention_mask=t_mask)[0]
            hidden = hidden.float()
            weights = t_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return np.asarray(pooled.cpu().numpy(), dtype=np.float32)


def torch_embedder(
    spec: ModelSpec,
    model_dir: Path,
    backend: str,
    mode: TorchMode = "fp32",
    device: str = "cpu",
    max_batch_tokens: int = 4096,
    max_batch_size: int = 64,
) -> PackedEmbedder:
    tokenizer = HFTokenizer(model_dir / "tokenizer.json", spec.max_tokens)
    on_gpu = device.startswith("cuda")
    return PackedEmbedder(
        spec,
        tokenizer,
        TorchForward(model_dir, mode, device),
        backend,
        max_batch_tokens=max_batch_tokens * (16 if on_gpu else 1),
        max_batch_size=max_batch_size * (16 if on_gpu else 1),
        overlap_above=256 if on_gpu else None,
    )
