"""`RUN/assembly.lock`: what assembly resolved (manifest with defaults, components and versions, hashes).

Only the `Run` object reads and writes it; everything else asks the `Run`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcore.errors import MmcoreError

__all__ = ["Lock", "lock_data", "sha256_file", "sha256_text"]

REQUIRED = ("mmcore", "api", "manifest", "base_dir", "resolved", "components", "hash")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolved_model(assembly: Any) -> dict[str, Any]:
    """The [model] table with every component's defaults filled in from its Config."""
    spec = assembly.loaded.manifest.model

    def full(name: str, generic: dict[str, Any]) -> dict[str, Any]:
        kind, _, key = name.partition(".")
        table = getattr(spec, kind)[key] if key else getattr(spec, kind)  # llm, retriever: no key
        if table.weights is not None:
            generic = {**generic, "weights": table.weights}
        return {**generic, **assembly.configs[name].model_dump(mode="json")}

    model: dict[str, Any] = {"max_length": assembly.max_length, "llm": full("llm", {"type": spec.llm.type})}
    model["encoders"] = {n: full(f"encoders.{n}", {"type": s.type, "modalities": s.modalities})
                         for n, s in spec.encoders.items()}
    model["projectors"] = {n: full(f"projectors.{n}", {"type": s.type}) for n, s in spec.projectors.items()}
    model["heads"] = {n: full(f"heads.{n}", {"type": s.type}) for n, s in spec.heads.items()}
    if spec.retriever is not None:
        model["retriever"] = full("retriever", {"type": spec.retriever.type, "encoder": spec.retriever.encoder})
    return model


def lock_data(assembly: Any, plugin_files: list[dict[str, str]]) -> dict[str, Any]:
    """The lock of an assembly; `plugin_files` are the run's copies of the local plugin files."""
    from importlib.metadata import version

    from mmcore.registry import API_VERSION

    manifest = assembly.loaded.manifest
    resolved = {
        "model": _resolved_model(assembly),
        "data": manifest.data.model_dump(mode="json"),
        "stages": [s.model_dump(mode="json") for s in manifest.stages],
        "plugins": manifest.plugins.model_dump(mode="json"),
        "eval": manifest.eval.model_dump(mode="json"),
        "seed": manifest.seed,
    }
    components = {name: {"type": r.name, "class": f"{r.cls.__module__}:{r.cls.__qualname__}",
                         "distribution": r.distribution, "version": r.version}
                  for name, r in assembly.resolved.items()}
    body = {"resolved": resolved, "components": components}
    return {
        "mmcore": version("mmcore"),
        "api": API_VERSION,
        "manifest": {"source": str(assembly.loaded.display.resolve()), "sha256": sha256_text(assembly.loaded.text)},
        "base_dir": str(assembly.loaded.base_dir),
        "plugin_files": plugin_files,
        **body,
        "tokens_per_item": assembly.tokens_per_item,
        "parameters": assembly.parameters,
        "trainable": assembly.trainable,
        "hash": sha256_text(json.dumps(body, sort_keys=True)),
    }


@dataclass(frozen=True)
class Lock:
    """A parsed lock. `path` is the lock file (for messages)."""

    path: Path
    data: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> Lock:
        """Parse `path`; a missing, non-JSON or incomplete lock is a one-line error saying to re-assemble."""
        run = path.parent
        fix = f"re-assemble the run (`mmcore assemble MANIFEST -o {run} --force`)"
        if not path.is_file():
            raise MmcoreError(f"{run}: no assembly.lock here; run `mmcore assemble MANIFEST -o {run}` first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise MmcoreError(f"{path}: not valid JSON ({str(err).splitlines()[0]}); {fix}") from None
        missing = [k for k in REQUIRED if not isinstance(data, dict) or k not in data]
        if missing or not isinstance(data.get("manifest"), dict):
            raise MmcoreError(f"{path}: not an mmcore assembly lock (missing {missing or ['manifest.sha256']}); {fix}")
        return cls(path, data)

    @property
    def manifest_source(self) -> Path:
        """The user's manifest this run was assembled from (where errors point)."""
        return Path(self.data["manifest"]["source"])

    @property
    def manifest_sha256(self) -> str:
        return str(self.data["manifest"]["sha256"])

    @property
    def base_dir(self) -> Path:
        return Path(self.data["base_dir"])

    @property
    def hash(self) -> str:
        return str(self.data["hash"])

    @property
    def resolved(self) -> dict[str, Any]:
        return dict(self.data["resolved"])

    @property
    def components(self) -> dict[str, dict[str, str]]:
        return dict(self.data["components"])

    @property
    def plugin_files(self) -> list[dict[str, str]]:
        return list(self.data.get("plugin_files") or [])
