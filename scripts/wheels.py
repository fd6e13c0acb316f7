"""Distributions as users get them: build every distribution's sdist and wheel, install the wheels (not
editable) into a clean virtual environment and check them there.

    .venv/bin/python scripts/wheels.py            (scripts/test.sh runs it after the test suite)

1. Each distribution (the core and every plugins/<kind>/<name>) builds an sdist, and its wheel is built from
   that sdist, as pip does — a file the sdist forgets fails here. The core's wheel must hold the real
   mmcore/defaults/tiny.toml (a symlink to examples/tiny.toml in the checkout).
2. A clean venv gets the wheels with `pip install --no-deps --no-index` (nothing from the checkout, nothing
   editable). Its third-party dependencies (torch, transformers, …) are not downloaded again: a `.pth` line
   points at a read-only view of .venv's site-packages that leaves out every mmcore distribution.
3. In it: every mmcore module imports from the venv, `mmcore plugins` lists every component of every
   distribution OK, and each plugin's own tests (its conformance suite included) pass from a copy of its
   tests/ folder — no file of the checkout on the path.
4. A second venv whose view lacks `timm` shows the C-Abstractor FAILED, naming the distribution to install.

Prints the time each part took.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "wheels"
IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache",
                                ".ruff_cache")
BUILD = ("import sys\nfrom setuptools import build_meta as backend\n"
         "print(getattr(backend, 'build_' + sys.argv[1])(sys.argv[2]))\n")


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run `cmd`; by default from an empty folder, so `python -c` never puts the checkout on the path."""
    if cwd is None:
        cwd = WORK / "empty"
        cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"wheels: {' '.join(map(str, cmd))} failed (in {cwd}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def distributions() -> list[Path]:
    return [ROOT, *sorted(p.parent for p in (ROOT / "plugins").glob("*/*/pyproject.toml"))]


def _source(dist: Path, target: Path) -> Path:
    """A copy of the distribution's sources (the core: its package, README and the examples its symlink needs)."""
    if dist == ROOT:
        target.mkdir(parents=True)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, target / name)
        for name in ("mmcore", "examples"):
            shutil.copytree(ROOT / name, target / name, symlinks=True, ignore=IGNORE)
        return target
    return Path(shutil.copytree(dist, target, symlinks=True, ignore=IGNORE))


def build(dist: Path, out: Path) -> Path:
    """sdist from the sources, then the wheel from the unpacked sdist; returns the wheel."""
    source = _source(dist, WORK / "src" / dist.name)
    sdist = out / _run([sys.executable, "-c", BUILD, "sdist", str(out)], cwd=source).strip().splitlines()[-1]
    unpacked = WORK / "unpacked" / dist.name
    unpacked.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        archive.extractall(unpacked, filter="data")
    (tree,) = list(unpacked.iterdir())
    return out / _run([sys.executable, "-c", BUILD, "wheel", str(out)], cwd=tree).strip().splitlines()[-1]


def check_core_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo("mmcore/defaults/tiny.toml")
        data = archive.read(info)
    if info.external_attr >> 28 == 0o12 or data != (ROOT / "examples" / "tiny.toml").read_bytes():
        sys.exit("wheels: mmcore/defaults/tiny.toml in the wheel is not the real examples/tiny.toml")


def dependency_view(target: Path, leave_out: tuple[str, ...] = ()) -> Path:
    """Symlinks to .venv's site-packages entries except mmcore's own distributions (and `leave_out`)."""
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir(parents=True)
    for entry in site.iterdir():
        name = entry.name.lower().replace("-", "_")
        if name.startswith(("mmcore", "__editable__", "_mmcore")) or entry.suffix == ".pth":
            continue
        if any(name == left or name.startswith(f"{left}_") or name.startswith(f"{left}.") for left in leave_out):
            continue
        (target / entry.name).symlink_to(entry)
    return target


def clean_venv(path: Path, wheels: list[Path], view: Path) -> Path:
    """A venv without pip or the checkout: the wheels installed with --no-deps, the view on a .pth line."""
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", "--without-pip", str(path)])
    python = path / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          *map(str, wheels)])
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "zz-dependencies.pth").write_text(f"{view}\n")
    return python


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "MMCORE_CACHE_DIR": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}


def _wheel_contents(wheel: Path) -> tuple[str, list[str]]:
    """(distribution name, top-level packages) of a wheel."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        name = next(line.split(":", 1)[1].strip() for line in archive.read(meta).decode().splitlines()
                    if line.startswith("Name:"))
    return name, sorted({n.split("/")[0] for n in names if "/" in n and ".dist-info/" not in n})


def check_installed(python: Path, wheels: list[Path]) -> None:
    """Every mmcore module comes from the venv; `mmcore plugins` lists each distribution, every row OK."""
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    contents = [_wheel_contents(w) for w in wheels]
    modules = [m for _, packages in contents for m in packages]
    where = json.loads(_run([str(python), "-c", "import importlib, json, sys; print(json.dumps("
                             "{m: importlib.import_module(m).__file__ for m in sys.argv[1:]}))", *modules],
                            env=_env(WORK / "cache")))
    outside = {m: f for m, f in where.items() if not f.startswith(site)}
    if outside:
        sys.exit(f"wheels: modules not from the clean venv: {outside}")
    rows = json.loads(_run([str(python), "-m", "mmcore", "plugins", "--json"], env=_env(WORK / "cache")))
    bad = [r for r in rows if r["status"] != "OK"]
    listed = {r["distribution"] for r in rows}
    missing = {name for name, _ in contents} - listed
    if bad or missing:
        sys.exit(f"wheels: `mmcore plugins` in the clean venv: not OK {bad}; not listed {sorted(missing)}")
    print(f"  mmcore plugins: {len(rows)} components of {len(listed)} distributions, all OK; "
          f"{len(modules)} packages import from the venv")


def plugin_tests(python: Path, dist: Path) -> float:
    """The plugin's tests (with its conformance suite) from a copy of its tests/ folder."""
    copy = WORK / "tests" / dist.name
    shutil.copytree(dist / "tests", copy / "tests", ignore=IGNORE)
    start = time.perf_counter()
    _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(copy), str(copy / "tests")],
         cwd=copy, env=_env(WORK / "cache"))
    return time.perf_counter() - start


def check_missing_dependency(wheels: list[Path]) -> None:
    """Without timm, `mmcore plugins` shows the C-Abstractor FAILED and names the distribution to install."""
    python = clean_venv(WORK / "venv-no-timm", wheels, dependency_view(WORK / "view-no-timm", ("timm",)))
    rows = json.loads(_run([str(python), "-m", "mmcore", "plugins", "--json"], env=_env(WORK / "cache-no-timm")))
    row = next(r for r in rows if r["name"] == "c-abstractor")
    if row["status"] != "FAILED" or 'pip install "timm' not in row["reason"]:
        sys.exit(f"wheels: without timm, c-abstractor should be FAILED naming timm; got {row}")
    print(f"  without timm: c-abstractor FAILED — {row['reason']}")


def main() -> None:
    started = time.perf_counter()
    shutil.rmtree(WORK, ignore_errors=True)
    out = WORK / "dist"
    out.mkdir(parents=True)
    dists = distributions()
    wheels = [build(dist, out) for dist in dists]
    check_core_wheel(wheels[0])
    built = time.perf_counter()
    print(f"built {len(wheels)} sdists and wheels in {built - started:.1f}s: {', '.join(w.name for w in wheels)}")
    python = clean_venv(WORK / "venv", wheels, dependency_view(WORK / "view"))
    check_installed(python, wheels)
    installed = time.perf_counter()
    print(f"clean venv with the wheels in {installed - built:.1f}s")
    for dist in dists[1:]:
        print(f"  {dist.relative_to(ROOT)}: its tests pass against the wheel ({plugin_tests(python, dist):.1f}s)")
    if any(d.name == "c-abstractor" for d in dists):
        check_missing_dependency(wheels)
    print(f"wheels: every distribution OK as installed from its wheel ({time.perf_counter() - started:.1f}s in all)")


if __name__ == "__main__":
    main()
