"""Run mutants against the tests: can the suite fail where the code is wrong?

Usage (from the repository root)::

    python tools/mutants.py tools/mutants.yaml              # every mutant of the file
    python tools/mutants.py tools/mutants.yaml --only krum  # those whose name holds "krum"
    python tools/mutants.py tools/mutants.yaml --check      # only check that each applies

A mutants file is a YAML list; each entry names one small edit of the library and the tests
that should notice it::

    - name: krum-min-n
      file: byzlearn/aggregators/rules/krum.py
      old: "min_n=lambda f: 2 * f + 3"     # must occur exactly once in the file
      new: "min_n=lambda f: 2 * f + 2"
      tests: [tests/aggregators/test_aggregators_mutation_findings.py]

The repository is copied once into a temporary folder (without ``.git``, ``.venv`` and
caches; numba and the generated selection kernels get caches of their own there, so the first
mutant of a compiled module recompiles it), each mutant is applied to the copy alone, its
tests run there (``pytest -x``), and the file is restored. A mutant is *killed* when a test
fails, *survives* when they all pass (a gap in the tests, or an equivalent mutant: same
behaviour), and *invalid* when the tests cannot run (a syntax error, no tests collected). The
checkout is never modified. The exit status is 1 when a mutant survived or was invalid, 2 for
a bad mutants file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# what the copy leaves out (VCS data, environments, caches, build outputs)
IGNORED = (".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
           "*.egg-info", "runs", "studies")  # fmt: skip


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


class MutantsFileError(ValueError):
    """A mutants file that cannot be used (one line, naming the entry)."""


def load(path: Path, root: Path = ROOT) -> list[Mutant]:
    """The mutants of ``path``, each checked against ``root``: its file exists inside the
    repository, ``old`` occurs in it exactly once and differs from ``new``, and its tests
    exist."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MutantsFileError(f"{path}: cannot read it ({' '.join(str(exc).split())})") from None
    if not isinstance(data, list) or not data:
        raise MutantsFileError(f"{path}: expected a non-empty list of mutants")
    mutants, names = [], set()
    for i, entry in enumerate(data):
        where = f"{path}: mutant {i + 1}"
        if not isinstance(entry, dict) or set(entry) != {"name", "file", "old", "new", "tests"}:
            raise MutantsFileError(f"{where}: expected the keys name, file, old, new, tests")
        name, file, old, new, tests = (entry[k] for k in ("name", "file", "old", "new", "tests"))
        if isinstance(tests, str):
            tests = [tests]
        if not all(isinstance(v, str) for v in (name, file, old, new, *tests)) or not tests:
            raise MutantsFileError(f"{where}: name, file, old, new and tests must be text")
        where = f"{path}: mutant {name!r}"
        if name in names:
            raise MutantsFileError(f"{where}: the name is used twice")
        names.add(name)
        for relative in (file, *tests):
            target = (root / relative).resolve()
            if not target.is_relative_to(root) or not target.exists():
                raise MutantsFileError(f"{where}: {relative} is not in the repository")
        count = (root / file).read_text().count(old)
        if count != 1 or old == new:
            found = "the same as new" if old == new else f"found {count} times, not once"
            raise MutantsFileError(f"{where}: old is {found} in {file}")
        mutants.append(Mutant(name, file, old, new, tuple(tests)))
    return mutants


def copy_repository(root: Path, into: Path) -> Path:
    """A copy of the repository at ``into / "repo"`` without what :data:`IGNORED` names."""
    target = into / "repo"
    shutil.copytree(root, target, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)
    return target


def run_mutant(mutant: Mutant, copy: Path, env: dict[str, str]) -> tuple[str, float, str]:
    """(verdict, seconds, the first failing test or the error's last line) for one mutant
    applied to ``copy``; the file is restored whatever happens."""
    path = copy / mutant.file
    original = path.read_text()
    path.write_text(original.replace(mutant.old, mutant.new, 1))
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        path.write_text(original)
    seconds = time.perf_counter() - start
    lines = done.stdout.splitlines()
    failed = next((line for line in lines if line.startswith(("FAILED ", "ERROR "))), "")
    test = failed.split(" - ")[0].split(" ", 1)[-1] if failed else ""
    if done.returncode == 0:
        return "survived", seconds, ""
    if done.returncode == 1 and failed.startswith("FAILED "):
        return "killed", seconds, test
    last = (done.stdout.strip() or done.stderr.strip() or "no output").splitlines()[-1]
    return "invalid", seconds, test or last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mutants", type=Path, help="the YAML file of mutants")
    parser.add_argument("--only", default="", help="run the mutants whose name holds this")
    parser.add_argument("--check", action="store_true", help="check the file, run nothing")
    args = parser.parse_args(argv)
    try:
        mutants = [m for m in load(args.mutants) if args.only in m.name]
    except MutantsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not mutants:
        print(f"error: no mutant's name holds {args.only!r}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{len(mutants)} mutants apply")
        return 0
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="byzlearn-mutants-") as scratch:
        copy = copy_repository(ROOT, Path(scratch))
        env = dict(  # numba's cache and the generated kernels' sources in the copy's folder
            os.environ,
            PYTHONPATH=str(copy),
            NUMBA_CACHE_DIR=str(Path(scratch) / "numba"),
            BYZLEARN_CACHE=str(Path(scratch) / "byzlearn"),
        )
        print("| mutant | file | verdict | seconds | first failing test |")
        print("| --- | --- | --- | ---: | --- |")
        for mutant in mutants:
            verdict, seconds, detail = run_mutant(mutant, copy, env)
            verdicts.append(verdict)
            print(f"| {mutant.name} | {mutant.file} | {verdict} | {seconds:.1f} | {detail} |",
                  flush=True)  # fmt: skip
    killed = verdicts.count("killed")
    print(f"\n{killed} of {len(verdicts)} killed, {verdicts.count('survived')} survived, "
          f"{verdicts.count('invalid')} invalid")  # fmt: skip
    return 0 if killed == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
