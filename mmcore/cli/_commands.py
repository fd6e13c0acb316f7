"""The built-in commands. This module imports click alone; each command imports what it needs when run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mmcore.cli._main import LazyGroup
from mmcore.errors import MmcoreError

__all__ = ["cli"]

POSITIVE = click.IntRange(min=1)


def _default_manifest() -> Path:
    """The embedded default manifest shipped inside the package (examples/tiny.toml links to it)."""
    from importlib import resources

    return Path(str(resources.files("mmcore") / "defaults" / "tiny.toml"))


def _version(ctx: click.Context, _: Any, value: bool) -> None:
    if value:
        from importlib.metadata import version

        click.echo(f"mmcore {version('mmcore')}")
        ctx.exit(0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Add --debug anywhere to see the traceback of an error. Plugins add commands through the "
                    "`mmcore.commands` entry-point group or the `mmcore_add_commands` hook.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Print the version and exit.")
@click.option("--debug", is_flag=True, expose_value=False, help="Show tracebacks for errors.")
@click.option("--local_rank", "--local-rank", type=int, hidden=True, expose_value=False,
              help="Added by the deepspeed launcher; the rank comes from its environment (LOCAL_RANK).")
def cli() -> None:
    """Build, train and run multimodal LLMs from manifests."""


@cli.command()
@click.option("--no-check", is_flag=True, help="Metadata only; do not check that plugins import.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(no_check: bool, as_json: bool) -> None:
    """List installed components and whether they import."""
    from mmcore.registry import discover_entries, plugin_filter
    from mmcore.registry._status import check_entries

    entries = discover_entries()
    enabled = [e for e in entries if plugin_filter(e.distribution) is None]
    verdicts = check_entries(enabled, refresh=not no_check)
    seen: dict[tuple[str, str], list[str]] = {}
    for e in enabled:
        seen.setdefault((e.kind, e.name), []).append(e.distribution)
    rows = []
    for e in entries:
        off = plugin_filter(e.distribution)
        claimants = seen.get((e.kind, e.name), [])
        if off:
            status, reason = "OFF", off
        elif len(claimants) > 1:
            status, reason = "CONFLICT", f"also claimed by {', '.join(c for c in claimants if c != e.distribution)}"
        else:
            verdict = verdicts.get(e)
            status = "?" if verdict is None else ("OK" if verdict == "OK" else "FAILED")
            reason = "" if verdict in (None, "OK") else str(verdict)
        rows.append({"name": e.name, "kind": e.kind, "distribution": e.distribution, "version": e.version,
                     "status": status, "reason": reason})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    headers = ["name", "kind", "distribution", "version", "status", "reason"]
    table = [dict(zip(headers, headers, strict=True)), *rows]
    widths = [max(len(str(r[h])) for r in table) for h in headers]
    for row in table:
        click.echo("  ".join(str(row[h]).ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())


@cli.command()
@click.argument("manifest", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Run directory to write (default: runs/NAME).")
@click.option("--dry-run", is_flag=True, help="Check and print the summary; write nothing.")
@click.option("--force", is_flag=True, help="Assemble over a run that has trained (its checkpoints are kept).")
def assemble(manifest: Path | None, output: Path | None, dry_run: bool, force: bool) -> None:
    """Validate MANIFEST, build it on the meta device, write the run.

    MANIFEST defaults to the embedded default, mmcore/defaults/tiny.toml (the same file as examples/tiny.toml).
    """
    import time

    from mmcore.assembly import assemble as assemble_manifest
    from mmcore.assembly import summary_table
    from mmcore.run import Run

    manifest = manifest or _default_manifest()
    output = output or Path("runs") / manifest.stem
    if not dry_run and output.exists() and not output.is_dir():
        raise MmcoreError(f"-o {output}: exists and is not a directory; choose another run directory")
    start = time.perf_counter()
    assembly = assemble_manifest(manifest, require_data=not dry_run)
    click.echo(summary_table(assembly))
    click.echo(f"\nassembled {manifest} on the meta device in {time.perf_counter() - start:.1f}s")
    for note in assembly.notes:
        click.echo(f"note: {note}")
    if assembly.loaded.plugin_files:
        files = ", ".join(str(path) for _, path in assembly.loaded.plugin_files)
        click.echo(f"local plugin files (copied into the run; they run whenever it is used): {files}")
    if dry_run:
        click.echo("dry run: nothing written")
        return
    run = Run.create(output, assembly, force=force)
    click.echo(f"wrote {run.lock_path}")


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--nproc", type=POSITIVE, default=1, show_default=True,
              help="Data-parallel processes on this machine (torchrun; gloo on CPU).")
@click.option("--nnodes", type=POSITIVE, default=1, show_default=True,
              help="Machines taking part; run the same command on each with its --node-rank.")
@click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True, help="This machine's index.")
@click.option("--master-addr", help="Address of the --node-rank 0 machine (with --nnodes > 1).")
@click.option("--master-port", type=click.IntRange(1, 65535), help="A free port there (with --nnodes > 1).")
def train(run: Path, nproc: int, nnodes: int, node_rank: int, master_addr: str | None, master_port: int | None) -> int:
    """Train RUN's stages (resumes after any interruption).

    Resumes from the last checkpoint that verifies; a finished run given more steps (re-assembled with --force)
    continues. On several machines, RUN must be on storage they share.
    """
    import os

    from mmcore.run import Run

    if (nproc > 1 or nnodes > 1) and "LOCAL_RANK" not in os.environ:
        from mmcore.train._launch import Nodes, launch

        nodes = Nodes(nnodes, node_rank, master_addr, master_port)
        nodes.check()
        opened = Run.open(run)
        if node_rank > 0:
            return launch(run, nproc, nodes)  # node 0's launcher holds the run's trainer lock
        with opened.training():
            return launch(run, nproc, nodes)
    from mmcore.train import train as train_run

    train_run(run)
    return 0


@cli.command(name="eval")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", multiple=True, help="A [data.datasets] name of the run, or a LLaVA .json/.jsonl file "
              "(repeatable); default: the manifest's [eval] datasets.")
@click.option("--image-folder", type=click.Path(path_type=Path), help="Images of a --data FILE (default: its folder).")
@click.option("--batch-size", type=POSITIVE)
@click.option("--limit", type=POSITIVE, help="At most this many samples per dataset (written beside the full "
              "results, never over them).")
@click.option("--max-new-tokens", type=POSITIVE)
@click.option("--template", help="Chat template (default: the run's).")
@click.option("--box-codec", help="How boxes are written: honeybee or minigpt.")
@click.option("--answer-format", type=click.Choice(["none", "short", "choice"]),
              help="LLaVA's line after the question: short = 'Answer the question using a single word or phrase.', "
                   "choice = 'Answer with the option's letter from the given choices directly.'")
@click.option("--mode", type=click.Choice(["generate", "multi-choice"]),
              help="multi-choice: answer with the candidate of lowest loss (MiniGPT-v2's multi_select).")
@click.option("--resample", type=click.IntRange(min=0),
              help="Re-ask a refer answer without a box up to N times, sampled (MiniGPT-v2's eval_ref.py --resample).")
def eval_(run: Path, data: tuple[str, ...], image_folder: Path | None, **settings: Any) -> None:
    """Evaluate RUN on its [eval] datasets or --data.

    VQA accuracy, caption token F1, referring Prec@0.5; writes RUN/eval/.
    """
    from mmcore.eval import evaluate_run

    results = evaluate_run(run, list(data) or None, image_folder=str(image_folder) if image_folder else None,
                           **settings)
    click.echo(json.dumps(results, indent=2))
    click.echo(f"wrote {run / 'eval'}")


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["mmcore", "hf-llava"]), default="mmcore", show_default=True,
              help="mmcore: manifest + lock + per-component weights; hf-llava: a directory "
                   "LlavaForConditionalGeneration / AutoProcessor load (LoRA merged).")
@click.option("--merge-lora", is_flag=True, help="Fold LoRA adapters into the LLM's weights.")
def export(run: Path, output: Path, fmt: str, merge_lora: bool) -> None:
    """Write RUN's final model to OUTPUT (a new directory)."""
    if fmt == "hf-llava":
        from mmcore.interop import export_hf_llava
        from mmcore.run import Run

        click.echo(f"wrote {export_hf_llava(run, output)}")
        encoders = Run.open(run).lock.resolved["model"]["encoders"]
        if any(e.get("image_aspect_ratio", "pad") == "pad" for e in encoders.values()):
            print("note: transformers' LlavaProcessor does not pad images to a square; pad them with the CLIP "
                  "mean colour first (LLaVA's expand2square) to get this run's inputs", file=sys.stderr)
        return
    from mmcore.export import export_run

    click.echo(f"wrote {export_run(run, output, merge_lora=merge_lora)}")


@cli.group(name="import", cls=LazyGroup, entry_prefix="import.")
def import_() -> None:
    """Turn another system's checkpoint into a run.

    Plugins add layouts through `mmcore.commands` entry points named `import.LAYOUT`.
    """


def _next_step(output: Path) -> None:
    click.echo(f"wrote {output} (next: mmcore generate {output} --image IMG --prompt '...')")


@import_.command(name="hf-llava")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Run directory to create.")
def import_hf_llava(source: Path, output: Path) -> None:
    """A transformers LlavaForConditionalGeneration directory (same logits, same greedy answers)."""
    from mmcore.interop import import_hf_llava as run_import

    if not source.is_dir():
        raise MmcoreError(f"{source}: no such directory; pass the checkpoint folder")
    run_import(source, output)
    _next_step(output)


@import_.command(name="llava")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Run directory to create.")
@click.option("--llm", help="The base LLM directory (pretrain and LoRA runs).")
@click.option("--vision", help="The CLIP directory (default: the config's mm_vision_tower).")
def import_llava(source: Path, output: Path, llm: str | None, vision: str | None) -> None:
    """A haotian-liu/LLaVA output_dir: mm_projector.bin, a LoRA run, or a full finetune."""
    from mmcore.interop import import_llava as run_import

    if not source.is_dir():
        raise MmcoreError(f"{source}: no such directory; pass the checkpoint folder")
    run_import(source, output, llm=llm, vision=vision)
    _next_step(output)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="The question; '<image>' is put in front when it names none.")
@click.option("--image", multiple=True, type=click.Path(path_type=Path), help="An image file (repeatable).")
@click.option("--template", help="Chat template (default: the run's).")
@click.option("--max-new-tokens", type=POSITIVE, default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save", type=click.Path(path_type=Path),
              help="PNG for the masks and boxes the answer's triggers produced (default: RUN/generate/IMAGE.png).")
def generate(run: Path, prompt: str, image: tuple[Path, ...], template: str | None, max_new_tokens: int,
             temperature: float, top_p: float, seed: int, save: Path | None) -> None:
    """Answer PROMPT about the images with RUN's model.

    A model with heads (u-LLaVA's [SEG] / [LOC]) also writes a PNG of the first image with the predicted masks
    and boxes drawn, and prints its path.
    """
    for item in image:
        if not item.is_file():
            raise MmcoreError(f"--image {item}: no such file; pass an existing image")
    import torch

    from mmcore.pipeline import load

    torch.manual_seed(seed)
    pipeline = load(run)
    sampling = temperature > 0
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sampling}
    if sampling:
        options.update(temperature=temperature, top_p=top_p)
    answer = pipeline.answer(prompt, list(image) or None, template=template, return_heads=True, **options)
    click.echo(answer.text)
    if answer.overlays and image:
        from mmcore.eval._draw import draw_overlays

        path = save or run / "generate" / f"{image[0].stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_overlays(image[0], answer.overlays).save(path)
        click.echo(f"wrote {path} ({len(answer.masks)} mask(s), {len(answer.boxes)} box(es))")


@cli.group()
def plugin() -> None:
    """Plugin authoring tools."""


@plugin.command()
@click.argument("name")
@click.option("--kind", required=True, type=click.Choice(["encoder", "projector", "head"]))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Target directory (default: ./mmcore-plugin-NAME).")
def new(name: str, kind: str, output: Path | None) -> None:
    """Scaffold a plugin distribution that installs and passes its tests."""
    from mmcore.cli._scaffold import scaffold

    target = scaffold(name, kind, output)
    click.echo(f"created {target}\nnext: pip install -e {target} && pytest {target}")
