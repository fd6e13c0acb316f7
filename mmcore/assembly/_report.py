"""The assembly summary table and the `assembly.lock` (resolved manifest, versions, hash)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mmcore.assembly._assemble import Assembly
from mmcore.registry import API_VERSION

__all__ = ["lock_data", "summary_table", "write_lock"]


def _resolved_model(assembly: Assembly) -> dict[str, Any]:
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


def lock_data(assembly: Assembly) -> dict[str, Any]:
    from importlib.metadata import version

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
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {
        "mmcore": version("mmcore"),
        "api": API_VERSION,
        "manifest": str(assembly.loaded.path.resolve()),
        "base_dir": str(assembly.loaded.base_dir),
        **body,
        "tokens_per_item": assembly.tokens_per_item,
        "parameters": assembly.parameters,
        "trainable": assembly.trainable,
        "hash": digest,
    }


def write_lock(assembly: Assembly, run_dir: Path) -> Path:
    """Write RUN/assembly.lock and RUN/manifest.toml atomically (a crash leaves the old ones)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {"manifest.toml": assembly.loaded.text,
             "assembly.lock": json.dumps(lock_data(assembly), indent=2, sort_keys=True) + "\n"}
    for name, text in files.items():
        tmp = run_dir / f".{name}.tmp{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, run_dir / name)
    return run_dir / "assembly.lock"


def _n(value: int) -> str:
    return f"{value:,}"


def summary_table(assembly: Assembly) -> str:
    """Component, type, distribution + version, parameters, trainable per stage, tokens per item."""
    stages = list(assembly.trainable)
    header = ["component", "type", "distribution", "parameters", *[f"train:{s}" for s in stages], "tokens/item"]
    rows = []
    tokens = {f"projectors.{e}": str(n) for m, n in assembly.tokens_per_item.items()
              for e in [assembly.model.modality_encoder[m]]}
    for name, resolved in assembly.resolved.items():
        rows.append([name, resolved.name, f"{resolved.distribution} {resolved.version}",
                     _n(assembly.parameters[name]), *[_n(assembly.trainable[s][name]) for s in stages],
                     tokens.get(name, "")])
    total = sum(assembly.parameters.values())
    rows.append(["total", "", "", _n(total), *[_n(sum(assembly.trainable[s].values())) for s in stages], ""])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = {3, *range(4, 4 + len(stages)), len(header) - 1}

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *[line(r) for r in rows[:-1]], rule, line(rows[-1])])
