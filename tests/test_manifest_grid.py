"""A mutation grid over the example manifests: every table of every example, broken three ways
(an unknown key, a typo'd `type`, a wrong-typed value), is refused by `mmcore assemble -o RUN` with one
`error:` line naming the file and the culprit, exit 2, and nothing written."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mmcore.cli import main
from mmcore.manifest._toml import toml_value

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# examples/*.toml, each file once (mmcore/defaults/tiny.toml links to examples/tiny.toml)
EXAMPLES = sorted({p.resolve(): p for p in EXAMPLES_DIR.glob("*.toml")}.values())
UNKNOWN_KEY = "definitely_not_a_key"
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

TablePath = tuple[str | int, ...]  # keys, and 0-based indices into arrays of tables


# --- a small TOML writer: tomllib reads it back to the same data -------------------------------------


def _key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else json.dumps(key)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _write_table(table: dict[str, Any], header: list[str], out: list[str]) -> None:
    """The table's plain keys under its header, then its sub-tables, then its arrays of tables."""
    for key, value in table.items():
        if not isinstance(value, dict) and not _is_table_array(value):
            out.append(f"{_key(key)} = {toml_value(value)}")
    for key, value in table.items():
        if isinstance(value, dict):
            out.append(f"\n[{'.'.join(_key(k) for k in [*header, key])}]")
            _write_table(value, [*header, key], out)
    for key, value in table.items():
        if _is_table_array(value):
            for entry in value:
                out.append(f"\n[[{'.'.join(_key(k) for k in [*header, key])}]]")
                _write_table(entry, [*header, key], out)


def dump_toml(data: dict[str, Any]) -> str:
    out: list[str] = []
    _write_table(data, [], out)
    return "\n".join(out).lstrip("\n") + "\n"


# --- the grid ----------------------------------------------------------------------------------------


def tables(data: dict[str, Any], path: TablePath = ()) -> list[tuple[TablePath, dict[str, Any]]]:
    """Every table reachable from the root (the root, sub-tables, inline tables, arrays-of-tables entries)."""
    found = [(path, data)]
    for key, value in data.items():
        if isinstance(value, dict):
            found += tables(value, (*path, key))
        elif _is_table_array(value):
            for index, entry in enumerate(value):
                found += tables(entry, (*path, key, index))
    return found


def table_id(path: TablePath) -> str:
    """'model.projectors.vision', 'stages#2.lora', '(root)'."""
    text = ""
    for part in path:
        text += f"#{part + 1}" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(root)"


def wrong_kind(value: Any) -> Any:
    """A value of another kind: number → string, bool → string, string → integer, list → integer."""
    if isinstance(value, bool):
        return "maybe"
    if isinstance(value, (int, float)):
        return "not-a-number"
    if isinstance(value, str):
        return 12345
    return 7


@dataclass(frozen=True)
class Mutation:
    example: Path
    table: TablePath
    kind: str  # "unknown-key", "typo-type", "wrong-type"
    key: str  # the key changed or added
    value: Any  # its new value
    culprit: str  # what the error line must name

    @property
    def id(self) -> str:
        return f"{self.example.stem}:{table_id(self.table)}:{self.kind}"

    def apply(self, data: dict[str, Any]) -> dict[str, Any]:
        mutated = copy.deepcopy(data)
        table: Any = mutated
        for part in self.table:
            table = table[part]
        table[self.key] = self.value
        return mutated


def mutations_of(example: Path) -> list[Mutation]:
    data = tomllib.loads(example.read_text(encoding="utf-8"))
    found = []
    for path, table in tables(data):
        found.append(Mutation(example, path, "unknown-key", UNKNOWN_KEY, 1, UNKNOWN_KEY))
        if isinstance(table.get("type"), str):
            typo = table["type"] + "x"
            found.append(Mutation(example, path, "typo-type", "type", typo, typo))
        plain = [k for k, v in table.items() if k != "type" and not isinstance(v, dict) and not _is_table_array(v)]
        if plain:
            key = plain[0]
            found.append(Mutation(example, path, "wrong-type", key, wrong_kind(table[key]), key))
    return found


MUTATIONS = [m for example in EXAMPLES for m in mutations_of(example)]


def prepared_copy(example: Path, folder: Path, data: dict[str, Any]) -> Path:
    """`data` written as `folder/<example name>`, with an empty file for every dataset `path` and an empty
    folder for every `image_folder` of the example, so missing data is never the reported error."""
    for spec in tomllib.loads(example.read_text(encoding="utf-8")).get("data", {}).get("datasets", {}).values():
        paths = spec.get("path")
        for path in [paths] if isinstance(paths, str) else paths if isinstance(paths, list) else []:
            if isinstance(path, str) and not Path(path).is_absolute():
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                (folder / path).touch()
        if isinstance(spec.get("image_folder"), str) and not Path(spec["image_folder"]).is_absolute():
            (folder / spec["image_folder"]).mkdir(parents=True, exist_ok=True)
    manifest = folder / example.name
    manifest.write_text(dump_toml(data), encoding="utf-8")
    return manifest


def names(line: str, culprit: str) -> bool:
    """Whether `line` names `culprit` as a whole word (so key 'r' is not found inside 'error')."""
    return re.search(rf"(?<![\w-]){re.escape(culprit)}(?![\w-])", line) is not None


# --- the rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_writer_round_trips_example(example: Path) -> None:
    """The grid's TOML writer reads back as exactly the example's data."""
    data = tomllib.loads(example.read_text(encoding="utf-8"))
    assert tomllib.loads(dump_toml(data)) == data


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_unmutated_example_assembles(example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each example, rewritten by the grid's writer and unmutated, passes `assemble --dry-run` (the grid's
    failures are the mutations' own)."""
    data = tomllib.loads(example.read_text(encoding="utf-8"))
    manifest = prepared_copy(example, tmp_path, data)
    assert main(["assemble", str(manifest), "--dry-run"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.id for m in MUTATIONS])
def test_mutation_is_refused(mutation: Mutation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mutated table is refused: exit 2, one `error:` line naming the file and the culprit, no run."""
    data = tomllib.loads(mutation.example.read_text(encoding="utf-8"))
    manifest = prepared_copy(mutation.example, tmp_path, mutation.apply(data))
    run_dir = tmp_path / "run"
    code = main(["assemble", str(manifest), "-o", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}; stderr: {err.strip()[:600]!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(manifest) in lines[0], err
    line = lines[0].replace(str(manifest), "")  # the path may contain any word; look past it
    assert names(line, mutation.culprit), f"{mutation.culprit!r} not named in {lines[0]!r}"
    assert not run_dir.exists()
