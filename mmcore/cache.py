"""The frozen-feature cache: a frozen encoder's (or a head's frozen image encoder's) outputs, stored per media
item under RUN/feature-cache/ and read back in later epochs and stages instead of running the module again.

    [model.encoders.vision]          [model.heads.seg]
    cache_features = true            cache_features = true     # SAM: its `image_encoder`

Beyond every upstream (DESIGN.md "Heads and adapters end to end"). How it stays correct:

* Key of an item = a digest of the tensor the component's view produced for it, computed in the data-loader
  worker (`KeyedView`, carried in the item's metadata as `feature_key`): the content and every preprocessing
  setting are in it by construction, and a view that randomises (u-LLaVA's "headtail" frame sampling) gives a
  new key per draw, never a stale hit. The model step hashes no pixels.
* Namespace = a digest of what else decides the output: the component's class and config, the cached
  module's weights (every tensor's bytes; recomputed when a parameter is replaced or changed in place), the
  modality and the compute context (device type, autocast dtype). New weights or settings → a new folder.
  Contract: weights change through torch's own operations (load_state_dict, in-place ops, a new tensor);
  an in-place edit through `.data` bypasses the version counter that says when to re-fingerprint.
* Never used while the cached module trains in this stage (any parameter with requires_grad: computed, with
  autograd, and counted as `bypassed`); never under DeepSpeed ZeRO-3 partitioned parameters (their bytes are
  not here to fingerprint).
* Files are written to a unique temporary name and renamed into place (atomic), so several data-loader
  workers, ranks or nodes sharing RUN never see a half-written entry; a damaged entry is recomputed and
  rewritten; a failed write (full disk) is counted and warned about once, never fatal.

    RUN/feature-cache/<component>/<namespace>/<key[:2]>/<key>.safetensors
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcore.kinds.encoder import Features
from mmcore.kinds.view import MediaView, Viewed

__all__ = ["FEATURE_KEY", "FeatureCache", "KeyedView", "attach_feature_caches", "tensor_digest", "weights_digest"]

FEATURE_KEY = "feature_key"  # an item's metadata entry holding its cache key
FORMAT = 1  # bump when the stored layout changes: every namespace changes with it


def _update(digest: Any, tensor: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes (any dtype, any device) to a hashlib object."""
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(flat.view(torch.uint8).numpy().data)  # the bytes, not copied


def tensor_digest(tensor: torch.Tensor) -> str:
    """An item's cache key: sha256 of the viewed tensor's dtype, shape and bytes."""
    digest = hashlib.sha256()
    _update(digest, tensor)
    return digest.hexdigest()


def weights_digest(module: nn.Module) -> str:
    """sha256 over every parameter and buffer of `module`: name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        _update(digest, tensor)
    return digest.hexdigest()


class KeyedView(MediaView):
    """A view whose items carry their cache key (`FEATURE_KEY`: the digest of the viewed tensor), computed where
    the view runs — in the data-loader workers. Attributes of the wrapped view read through."""

    def __init__(self, inner: MediaView) -> None:
        self.inner = inner

    @classmethod
    def wrap(cls, view: Any) -> Any:
        """`view` keyed (once: a keyed view is returned as it is; None stays None)."""
        return view if view is None or isinstance(view, KeyedView) else cls(view)

    def __call__(self, item: Any, modality: str) -> Viewed:
        tensor, meta = self.inner(item, modality)
        return tensor, {**meta, FEATURE_KEY: tensor_digest(tensor)}

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # unpickling: not set yet
            raise AttributeError(name)
        return getattr(self.inner, name)


def _split(output: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A batched output (a tensor or `Features`) → named batched tensors and what is not per item."""
    if isinstance(output, torch.Tensor):
        return {"tensor": output}, {"type": "tensor"}
    if not isinstance(output, Features):
        raise TypeError(f"the feature cache stores tensors or Features, not {type(output).__name__}")
    fields = {"tokens": output.tokens}
    if output.pooled is not None:
        fields["pooled"] = output.pooled
    for level, tensor in enumerate(output.levels or ()):
        fields[f"levels.{level}"] = tensor
    return fields, {"type": "features", "grid": json.dumps(output.grid)}


def _join(fields: dict[str, torch.Tensor], static: dict[str, str]) -> Any:
    """The inverse of `_split`."""
    if static["type"] == "tensor":
        return fields["tensor"]
    levels = tuple(fields[f"levels.{i}"] for i in range(sum(k.startswith("levels.") for k in fields)))
    grid = json.loads(static["grid"])
    return Features(fields["tokens"], tuple(grid) if grid is not None else None, fields.get("pooled"), levels or None)


class FeatureCache:
    """One component's cache folder and its counters (`stats`: hits, misses, stored, bypassed, unkeyed,
    damaged, write_errors)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.stats: Counter[str] = Counter()
        self._weights: dict[int, tuple[tuple[Any, ...], str]] = {}  # id(module) → (guard, digest)
        self._warned: set[str] = set()

    # --- identity ---------------------------------------------------------------------------------
    def _weights_digest(self, module: nn.Module) -> str:
        """The module's weights digest, recomputed only when a tensor was replaced or changed in place."""
        guard = tuple((n, t.data_ptr(), t._version, t.dtype) for n, t in module.state_dict(keep_vars=True).items())
        known = self._weights.get(id(module))
        if known is None or known[0] != guard:
            known = (guard, weights_digest(module))
            self._weights[id(module)] = known
        return known[1]

    def namespace(self, component: Any, module: nn.Module, tag: str, device: torch.device) -> str:
        """Digest of everything besides the item that decides the cached output."""
        config = component.config.model_dump_json() if hasattr(component.config, "model_dump_json") else ""
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        identity = {"format": FORMAT, "class": f"{type(component).__module__}:{type(component).__qualname__}",
                    "config": config, "module": component.cached_module, "tag": tag, "device": device.type,
                    "autocast": str(autocast), "weights": self._weights_digest(module)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, namespace: str, key: str) -> Path:
        return self.folder / namespace / key[:2] / f"{key}.safetensors"

    # --- running ----------------------------------------------------------------------------------
    def run(self, component: Any, inputs: torch.Tensor, metadata: Sequence[dict[str, Any]],
            compute: Callable[[torch.Tensor], Any], tag: str = "") -> Any:
        """`compute(inputs)` for N items (inputs (N, ...)); stored items read back, only the others computed."""
        module = component.get_submodule(component.cached_module or "")
        count = inputs.shape[0]
        if any(p.requires_grad for p in module.parameters()) or any(hasattr(p, "ds_id") for p in module.parameters()):
            self._count("bypassed", count)  # trains in this stage (or ZeRO-3 partitioned): never cached
            return compute(inputs)
        keys = [(metadata[i] if i < len(metadata) else {}).get(FEATURE_KEY) for i in range(count)]
        if not all(keys):
            self._count("unkeyed", sum(1 for k in keys if not k))
            self._warn("unkeyed", f"feature cache {self.folder}: items without a key ({FEATURE_KEY}) are computed "
                                  f"every time; their view must be the component's keyed view")
        namespace = self.namespace(component, module, tag, inputs.device)
        found: dict[int, dict[str, torch.Tensor]] = {}
        static: dict[str, str] | None = None
        for i, key in enumerate(keys):
            if key:
                loaded = self._load(self.path(namespace, key), inputs.device)
                if loaded is not None:
                    found[i], static = loaded
        missing = [i for i in range(count) if i not in found]
        self._count("hits", len(found))
        self._count("misses", len(missing))
        computed: dict[str, torch.Tensor] = {}
        if missing:
            computed, static = _split(compute(inputs[missing] if len(missing) < count else inputs))
            for j, i in enumerate(missing):
                if keys[i]:
                    self._store(self.path(namespace, str(keys[i])), {k: v[j] for k, v in computed.items()}, static)
        if not found:
            return _join(computed, static or {})
        assert static is not None  # Contract: found or computed items set it
        row = {i: j for j, i in enumerate(missing)}
        names = computed.keys() if computed else next(iter(found.values())).keys()
        fields = {n: torch.stack([found[i][n] if i in found else computed[n][row[i]] for i in range(count)])
                  for n in names}
        return _join(fields, static)

    def _load(self, path: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        from safetensors import safe_open

        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})
        except Exception:  # any damage (truncated, garbled header): recompute and rewrite
            self._count("damaged")
            return None

    def _store(self, path: Path, tensors: dict[str, torch.Tensor], static: dict[str, str]) -> None:
        """Write one entry atomically (unique temporary name, then rename); a failure is counted, never fatal."""
        from safetensors.torch import save_file

        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().to("cpu").clone() for k, v in tensors.items()}, str(tmp), metadata=static)
            os.replace(tmp, path)
            self._count("stored")
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            self._count("write_errors")
            self._warn("write", f"feature cache {self.folder}: cannot write ({err}); items are computed instead")

    def _count(self, what: str, number: int = 1) -> None:
        if number:
            self.stats[what] += number

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def disk_bytes(self) -> int:
        """Bytes of the stored entries."""
        return sum(p.stat().st_size for p in self.folder.rglob("*.safetensors")) if self.folder.is_dir() else 0

    def entries(self) -> int:
        return sum(1 for _ in self.folder.rglob("*.safetensors")) if self.folder.is_dir() else 0


def attach_feature_caches(assembly: Any, root: Path) -> dict[str, FeatureCache]:
    """Give every component whose manifest table sets `cache_features = true` its cache under `root`."""
    spec = assembly.loaded.manifest.model
    tables = {**{f"encoders.{n}": s for n, s in spec.encoders.items()},
              **{f"heads.{n}": s for n, s in spec.heads.items()}}
    components = assembly.model.components()
    caches = {}
    for name, table in tables.items():
        if getattr(table, "cache_features", False):
            caches[name] = FeatureCache(Path(root) / name)
            components[name].feature_cache = caches[name]
    return caches
