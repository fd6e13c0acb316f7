"""The built-in commands: plugins, assemble, generate, plugin new."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mmcore.errors import MmcoreError

DEFAULT_MANIFEST = "examples/tiny.toml"


def add_plugins(sub: Any) -> None:
    p = sub.add_parser("plugins", help="list installed components and whether they import")
    p.add_argument("--no-check", action="store_true", help="metadata only; do not check imports")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_plugins)


def run_plugins(args: argparse.Namespace) -> int:
    from mmcore.registry import discover_entries, plugin_filter
    from mmcore.registry._status import check_entries

    entries = discover_entries()
    enabled = [e for e in entries if plugin_filter(e.distribution) is None]
    verdicts = check_entries(enabled, refresh=not args.no_check)
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
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = ["name", "kind", "distribution", "version", "status", "reason"]
    widths = [max(len(str(r[h])) for r in [dict(zip(headers, headers, strict=True)), *rows]) for h in headers]
    for row in [dict(zip(headers, headers, strict=True)), *rows]:
        print("  ".join(str(row[h]).ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    return 0


def add_assemble(sub: Any) -> None:
    p = sub.add_parser("assemble", help="validate a manifest, build it on the meta device, write RUN")
    p.add_argument("manifest", nargs="?", default=None, help=f"the manifest (default: {DEFAULT_MANIFEST})")
    p.add_argument("-o", "--output", default=None, help="run directory to write (default: runs/<name>)")
    p.add_argument("--dry-run", action="store_true", help="check and print the summary; write nothing")
    p.set_defaults(func=run_assemble)


def _default_manifest() -> Path:
    """examples/tiny.toml when run from a checkout, else the copy shipped inside the package."""
    path = Path(DEFAULT_MANIFEST)
    if path.exists():
        return path
    from importlib import resources

    shipped = Path(str(resources.files("mmcore") / "defaults" / "tiny.toml"))
    if not shipped.exists():
        raise MmcoreError(f"no manifest given and {DEFAULT_MANIFEST} is not here; pass a manifest path")
    return shipped


def run_assemble(args: argparse.Namespace) -> int:
    import time

    from mmcore.assembly import assemble, summary_table, write_lock

    manifest = Path(args.manifest) if args.manifest else _default_manifest()
    output = Path(args.output) if args.output else Path("runs") / manifest.stem
    if not args.dry_run and output.exists() and not output.is_dir():
        raise MmcoreError(f"-o {output}: exists and is not a directory; choose another run directory")
    start = time.perf_counter()
    assembly = assemble(manifest)
    print(summary_table(assembly))
    print(f"\nassembled {manifest} on the meta device in {time.perf_counter() - start:.1f}s")
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    lock = write_lock(assembly, output)
    print(f"wrote {lock}")
    return 0


def add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="run the manifest's stages (resumes from the last checkpoint)")
    p.add_argument("run", help="run directory written by `mmcore assemble`")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes (torchrun; gloo on CPU)")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import os

    run = Path(args.run)
    if not (run / "assembly.lock").exists():
        raise MmcoreError(f"{run}: no assembly.lock; run `mmcore assemble MANIFEST -o {run}` first")
    if args.nproc < 1:
        raise MmcoreError(f"--nproc {args.nproc}: must be at least 1")
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from mmcore.train._launch import launch

        return launch(run, args.nproc)
    from mmcore.train import train

    train(run)
    return 0


def add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate a run: VQA accuracy, caption F1, referring Prec@0.5")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", action="append", default=None,
                   help="a [data.datasets] name of the run, or a LLaVA .json/.jsonl file (repeatable); "
                        "default: the manifest's [eval] datasets")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="at most this many samples per dataset")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--template", default=None)
    p.add_argument("--box-codec", default=None, help="honeybee or minigpt (how boxes are written)")
    p.add_argument("--answer-format", choices=["none", "short", "choice"], default=None,
                   help="LLaVA's line after the question: short = 'Answer the question using a single word or "
                        "phrase.', choice = 'Answer with the option's letter from the given choices directly.'")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if not (run / "assembly.lock").exists():
        raise MmcoreError(f"{run}: no assembly.lock; run `mmcore assemble MANIFEST -o {run}` first")
    for flag in ("batch_size", "limit", "max_new_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise MmcoreError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    from mmcore.eval import evaluate_run

    results = evaluate_run(run, args.data, batch_size=args.batch_size, limit=args.limit,
                           max_new_tokens=args.max_new_tokens, template=args.template, box_codec=args.box_codec,
                           answer_format=args.answer_format)
    print(json.dumps(results, indent=2))
    print(f"wrote {run / 'eval'}")
    return 0


def add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="write the final model: an mmcore run, or a transformers Llava directory")
    p.add_argument("run", help="run directory (trained, or imported)")
    p.add_argument("output", help="directory to create")
    p.add_argument("--format", choices=["mmcore", "hf-llava"], default="mmcore",
                   help="mmcore: manifest + lock + per-component weights; hf-llava: a directory "
                        "LlavaForConditionalGeneration / AutoProcessor load (LoRA merged)")
    p.add_argument("--merge-lora", action="store_true", help="fold LoRA adapters into the LLM's weights")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    run, output = Path(args.run), Path(args.output)
    if not (run / "assembly.lock").exists():
        raise MmcoreError(f"{run}: no assembly.lock; pass a run directory (from assemble, train or import)")
    if args.format == "hf-llava":
        from mmcore.interop import export_hf_llava

        print(f"wrote {export_hf_llava(run, output)}")
        encoders = json.loads((run / "assembly.lock").read_text())["resolved"]["model"]["encoders"]
        if any(e.get("image_aspect_ratio", "pad") == "pad" for e in encoders.values()):
            print("note: transformers' LlavaProcessor does not pad images to a square; pad them with the CLIP "
                  "mean colour first (LLaVA's expand2square) to get this run's inputs", file=sys.stderr)
        return 0
    from mmcore.export import export_run

    print(f"wrote {export_run(run, output, merge_lora=args.merge_lora)}")
    return 0


def add_import(sub: Any) -> None:
    p = sub.add_parser("import", help="turn a transformers Llava or a LLaVA checkpoint into an mmcore run")
    p.add_argument("format", choices=["hf-llava", "llava"],
                   help="hf-llava: a LlavaForConditionalGeneration directory; llava: a haotian-liu/LLaVA "
                        "output_dir (mm_projector.bin, a LoRA run, or a full finetune)")
    p.add_argument("source", help="the checkpoint directory")
    p.add_argument("-o", "--output", required=True, help="run directory to create")
    p.add_argument("--llm", default=None, help="llava: the base LLM directory for pretrain and LoRA runs")
    p.add_argument("--vision", default=None, help="llava: the CLIP directory (default: mm_vision_tower)")
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    source, output = Path(args.source), Path(args.output)
    if not source.is_dir():
        raise MmcoreError(f"{source}: no such directory; pass the checkpoint folder")
    if args.format == "hf-llava" and (args.llm or args.vision):
        raise MmcoreError("--llm / --vision are for `import llava`; a hf-llava directory holds every part")
    from mmcore.interop import import_hf_llava, import_llava

    if args.format == "hf-llava":
        import_hf_llava(source, output)
    else:
        import_llava(source, output, llm=args.llm, vision=args.vision)
    print(f"wrote {output} (next: mmcore generate {output} --image IMG --prompt '...')")
    return 0


def add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="answer a prompt about an image with a run's model")
    p.add_argument("run", help="run directory (from `mmcore assemble` or `mmcore train`)")
    p.add_argument("--prompt", required=True, help="the question; '<image>' is prepended when absent")
    p.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
    p.add_argument("--template", default=None, help="chat template (default: the last stage's)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    for image in args.image:
        if not Path(image).is_file():
            raise MmcoreError(f"--image {image}: no such file; pass an existing image")
    import torch

    from mmcore.pipeline import load

    torch.manual_seed(args.seed)
    pipeline = load(args.run)
    lock = json.loads((Path(args.run) / "assembly.lock").read_text())
    template = args.template or (lock["resolved"]["stages"][-1]["template"] if lock["resolved"]["stages"]
                                 else "vicuna_v1")
    prompt = args.prompt
    missing = len(args.image) - prompt.count("<image>")
    if missing > 0:  # LLaVA puts the image first: "<image>\n" + question
        prompt = "<image>\n" * missing + prompt
    sampling = args.temperature > 0
    answer = pipeline.answer([prompt], [{"image": list(args.image)}] if args.image else None,
                             template=template, max_new_tokens=args.max_new_tokens, do_sample=sampling,
                             temperature=args.temperature if sampling else 1.0, top_p=args.top_p)[0]
    print(answer)
    return 0


def add_plugin_new(sub: Any) -> None:
    p = sub.add_parser("plugin", help="plugin authoring tools")
    psub = p.add_subparsers(dest="plugin_command", metavar="SUBCOMMAND", required=True,
                            parser_class=type(p))
    new = psub.add_parser("new", help="scaffold a plugin distribution that installs and passes its tests")
    new.add_argument("name", help="plugin name, e.g. my-projector (distribution mmcore-plugin-NAME)")
    new.add_argument("--kind", required=True, choices=["encoder", "projector", "head"])
    new.add_argument("-o", "--output", default=None, help="target directory (default: ./mmcore-plugin-NAME)")
    new.set_defaults(func=run_plugin_new)


def run_plugin_new(args: argparse.Namespace) -> int:
    from mmcore.cli._scaffold import scaffold

    target = scaffold(args.name, args.kind, Path(args.output) if args.output else None)
    print(f"created {target}\nnext: pip install -e {target} && pytest {target}", file=sys.stdout)
    return 0
