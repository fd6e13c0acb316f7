"""What identifies an encoder for a cache: its type, its config and a fingerprint of its weights.

The fingerprint hashes every parameter's name, shape and a strided sample of its values (at most 4,096 per
tensor), so it costs milliseconds even for ImageBind-huge and changes with any real change of weights.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

__all__ = ["encoder_identity", "same_encoder"]


def _fingerprint(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].to(torch.float64).cpu().numpy().round(6)
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()


def encoder_identity(encoder: Any) -> dict[str, Any]:
    """{"type", "config", "weights"} of an encoder module (config as JSON-safe values)."""
    config = encoder.config.model_dump(mode="json") if hasattr(encoder.config, "model_dump") else {}
    return {"type": f"{type(encoder).__module__}:{type(encoder).__name__}", "config": json.loads(json.dumps(config)),
            "weights": _fingerprint(encoder)}


def same_encoder(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """None when the identities match, else what differs (type, config or weights)."""
    for key in ("type", "config", "weights"):
        if recorded.get(key) != current.get(key):
            return key
    return None
