"""The hooks mmcore calls (pluggy project name ``mmcore``).

A plugin module implements any of these with ``@mmcore.hookimpl`` and is found either through the
``mmcore.plugins`` entry-point group or as a local file named in a manifest's ``[plugins] files``.
Local files run like a pytest ``conftest.py``: importing them executes their code.

Implementations may accept a subset of a hook's arguments, so new arguments can be added later
without breaking old plugins.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("mmcore")

__all__ = ["hookspec"]


@hookspec(historic=True)
def mmcore_register_components(register: Any) -> None:
    """Register components at run time, without an entry point.

    :param register: ``register(kind, name, cls)`` — adds ``cls`` as the ``kind`` component named
        ``name`` (the manifest ``type``). A name already installed or registered is an error.

    Historic: a plugin file loaded after the first call still gets called. Used by local plugin
    files named in a manifest's ``[plugins]`` table.
    """


@hookspec
def mmcore_manifest_loaded(data: dict[str, Any], path: str) -> None:
    """Adjust a manifest after it is parsed and before it is validated.

    :param data: the parsed TOML as a mutable dict; change it in place.
    :param path: the manifest file.

    Whatever the hook leaves in ``data`` is validated like the user's own keys.
    """


@hookspec
def mmcore_model_assembled(model: Any, manifest: Any) -> None:
    """Act on the assembled model: wire an adapter, attach a retriever, register buffers.

    :param model: the ``MultimodalModel`` (on the meta device during ``mmcore assemble``).
    :param manifest: the validated ``Manifest``.
    """


@hookspec
def mmcore_add_commands(cli: Any) -> None:
    """Add commands to the ``mmcore`` CLI (a ``click.Group``): ``cli.add_command(my_click_command)``.

    :param cli: the top-level click group.

    Called only when the requested command is neither built in nor declared as an entry point, so
    ``mmcore --help`` stays fast. A distribution should rather declare its commands in the
    ``mmcore.commands`` entry-point group (listed in ``--help`` without importing it); the hook is for
    hook modules and local plugin code.
    """


@hookspec
def mmcore_train_step(stage: str, step: int, metrics: dict[str, float]) -> None:
    """Called after each optimizer step with the step's metrics (loss, lr, tokens/s)."""


@hookspec
def mmcore_evaluated(stage: str, step: int, metrics: dict[str, float]) -> None:
    """Called after an evaluation with its metrics."""


@hookspec
def mmcore_checkpoint_saved(stage: str, step: int, path: str) -> None:
    """Called after a checkpoint has been written completely (atomically) to ``path``."""
