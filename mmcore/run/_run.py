"""`Run`: the one owner of a run directory.

    RUN/manifest.toml      the user's manifest, as assembled (its sha256 is in the lock: edits are detected)
    RUN/assembly.lock      what assembly resolved (read and written only here)
    RUN/plugins/           copies of the manifest's local plugin files, with their sha256 in the lock
    RUN/checkpoints/       training checkpoints        RUN/weights/   the final model (+ run.json)
    RUN/log.jsonl, plots/, eval/, tensorboard/         RUN/train.pid  the trainer holding the run
    RUN/feature-cache/     frozen features of components with `cache_features = true` (mmcore.cache)

Paths in the manifest resolve against the folder the manifest was assembled from (`base_dir` in the lock),
never against RUN. Re-assembling over a run that has trained needs `force`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmcore.errors import MmcoreError
from mmcore.run._lock import Lock, lock_data, sha256_file, sha256_text
from mmcore.run._pidlock import trainer_lock

__all__ = ["Run"]

NO_LOCAL_PLUGINS = "MMCORE_NO_LOCAL_PLUGINS"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Run:
    """A run directory. `Run.open` checks it (lock, manifest edits); `Run.create` writes it at assemble."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock: Lock | None = None

    # --- layout ----------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.toml"

    @property
    def lock_path(self) -> Path:
        return self.root / "assembly.lock"

    @property
    def weights_dir(self) -> Path:
        return self.root / "weights"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def has_trained(self) -> bool:
        """Checkpoints or final weights exist (re-assembling over them needs `force`)."""
        return any(self.checkpoints_dir.glob("ckpt-*")) or any(self.weights_dir.glob("*.safetensors"))

    # --- the lock --------------------------------------------------------------------------------
    @property
    def lock(self) -> Lock:
        if self._lock is None:
            self._lock = Lock.read(self.lock_path)
        return self._lock

    @classmethod
    def open(cls, root: str | Path) -> Run:
        """A run to use: its lock parses and its manifest is the one assembled."""
        run = cls(root)
        if not run.root.is_dir():
            raise MmcoreError(f"{run.root}: no such run directory; create it with `mmcore assemble MANIFEST -o {root}`")
        lock = run.lock
        if not run.manifest_path.is_file():
            raise MmcoreError(f"{run.manifest_path}: missing; re-assemble the run (`mmcore assemble "
                              f"{lock.manifest_source} -o {run.root} --force`)")
        if sha256_text(run.manifest_path.read_text(encoding="utf-8")) != lock.manifest_sha256:
            raise MmcoreError(f"{run.manifest_path} was edited after assembly; to use the edit re-assemble it: "
                              f"`mmcore assemble {run.manifest_path} -o {run.root}` (add --force once it has trained)")
        return run

    @classmethod
    def owning(cls, manifest: Path) -> Run | None:
        """The run whose own `manifest.toml` this is (re-assembling a run's manifest), or None."""
        if manifest.name == "manifest.toml" and (manifest.parent / "assembly.lock").is_file():
            run = cls(manifest.parent)
            try:
                run.lock  # noqa: B018 - parse it
            except MmcoreError:
                return None
            return run
        return None

    @classmethod
    def create(cls, root: str | Path, assembly: Any, force: bool = False) -> Run:
        """Write RUN for `assembly`: manifest, local plugin copies, then the lock (the commit point)."""
        run = cls(root)
        if run.root.exists() and not run.root.is_dir():
            raise MmcoreError(f"-o {run.root}: exists and is not a directory; choose another run directory")
        if run.has_trained() and not force:
            raise MmcoreError(f"{run.root} has trained (checkpoints or weights); assembling over it needs --force "
                              f"(training then continues from its checkpoints where the model still fits), or "
                              f"choose a new run directory with -o")
        run.root.mkdir(parents=True, exist_ok=True)
        copies = run._copy_plugin_files(assembly.loaded.plugin_files)
        _write_atomic(run.manifest_path, assembly.loaded.text)
        _write_atomic(run.lock_path, json.dumps(lock_data(assembly, copies), indent=2, sort_keys=True) + "\n")
        keep = {c["copy"] for c in copies}
        for stale in (run.root / "plugins").glob("*"):
            if f"plugins/{stale.name}" not in keep:
                stale.unlink()
        return run

    def _copy_plugin_files(self, files: list[tuple[str, Path]]) -> list[dict[str, str]]:
        copies = []
        for index, (name, source) in enumerate(files):
            relative = f"plugins/{index}-{source.name}"
            target = self.root / relative
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
            copies.append({"name": name, "source": str(source), "copy": relative, "sha256": sha256_file(target)})
        return copies

    # --- using it --------------------------------------------------------------------------------
    def plugin_files(self) -> dict[str, Path]:
        """Manifest entry → the run's verified copy. Names them before they run; refuses changed copies."""
        entries = self.lock.plugin_files
        if not entries:
            return {}
        names = ", ".join(f"{e['copy']} (sha256 {e['sha256'][:12]})" for e in entries)
        if os.environ.get(NO_LOCAL_PLUGINS) == "1":
            raise MmcoreError(f"{self.root} runs local plugin files ({names}); {NO_LOCAL_PLUGINS}=1 forbids them — "
                              f"unset it if you trust this run")
        for entry in entries:
            path = self.root / entry["copy"]
            if not path.is_file() or sha256_file(path) != entry["sha256"]:
                raise MmcoreError(f"{path}: changed since assembly (recorded sha256 {entry['sha256'][:12]}); refusing "
                                  f"to run it — re-assemble the run to accept the new code")
        print(f"running local plugin files of {self.root}: {names}", file=sys.stderr)
        return {e["name"]: self.root / e["copy"] for e in entries}

    @property
    def feature_cache_dir(self) -> Path:
        return self.root / "feature-cache"

    def assemble(self, device: str = "cpu") -> Any:
        """The run's model from its own files, on `device` (weights from the manifest's sources), with the
        frozen-feature caches its manifest asks for (`cache_features`) under RUN/feature-cache/."""
        from mmcore.assembly import assemble
        from mmcore.cache import attach_feature_caches

        lock = self.lock
        hints = {(c["type"], c["distribution"]) for c in lock.components.values()}
        assembly = assemble(self.manifest_path, device=device, base_dir=lock.base_dir, display=lock.manifest_source,
                            plugin_files=self.plugin_files(), providers=hints)
        if str(device) != "meta":
            attach_feature_caches(assembly, self.feature_cache_dir)
        return assembly

    def default_template(self) -> str:
        """`[eval] template`, else the last stage's, else LLaVA's `vicuna_v1`."""
        resolved = self.lock.resolved
        stages = resolved.get("stages") or []
        return str((resolved.get("eval") or {}).get("template") or (stages[-1]["template"] if stages else "vicuna_v1"))

    def pipeline(self, device: str = "cpu") -> Any:
        """The run's model with its final weights (RUN/weights) and its processor: `mmcore.load`."""
        from mmcore.pipeline import Pipeline

        assembly = self.assemble("cpu")
        self.load_weights(assembly.model)
        assembly.model.to(device).eval()
        return Pipeline(assembly.model, self.processor(assembly), self.default_template())

    def processor(self, assembly: Any) -> Any:
        """The run's data processor for inference: every installed template, the run's own first."""
        from mmcore.data import Processor
        from mmcore.errors import PluginError

        for name in [self.default_template(), *assembly.registry.names("template")]:
            try:
                assembly.template(name)
            except PluginError:
                continue  # a broken template plugin only matters when asked for
        return Processor.for_model(assembly.model, assembly.max_length, assembly.templates,
                                   max_reply=assembly.loaded.manifest.model.max_reply_tokens)

    # --- final weights ---------------------------------------------------------------------------
    def load_weights(self, model: Any) -> list[str]:
        """Load RUN/weights into `model` (re-applying its LoRA); a note when they predate this assembly."""
        from mmcore.checkpoint import load_component_weights

        stamp = self.weights_dir / "run.json"
        if stamp.is_file():
            written_for = json.loads(stamp.read_text()).get("lock_hash")
            if written_for != self.lock.hash:
                print(f"note: {self.weights_dir} was written for an earlier assembly of this run; "
                      f"`mmcore train {self.root}` updates it", file=sys.stderr)
        lora = self.weights_dir / "lora.json"
        if lora.exists():
            model.llm.apply_lora(**json.loads(lora.read_text()))
        return load_component_weights(model.components(), self.weights_dir)

    def write_weights(self, modules: dict[str, Any], lora: dict[str, Any] | None, stages: dict[str, int]) -> None:
        """Write RUN/weights: every component whole, the LoRA marker and what they were trained for."""
        from mmcore.checkpoint import save_component_weights

        save_component_weights(modules, self.weights_dir)
        marker = self.weights_dir / "lora.json"
        if lora:
            _write_atomic(marker, json.dumps(lora))
        elif marker.exists():
            marker.unlink()
        _write_atomic(self.weights_dir / "run.json", json.dumps({"lock_hash": self.lock.hash, "stages": stages}))

    @contextmanager
    def training(self) -> Iterator[None]:
        """Hold the run's trainer lock (one `mmcore train` at a time)."""
        with trainer_lock(self.root):
            yield
