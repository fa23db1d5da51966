"""Print the (attack x rule) damage table on synthetic Gaussian honest gradients.

Cell = ||F(honest ∪ byzantine) - mean(honest)|| / s, with s = sqrt(sum_i ||g_i - mean||^2 / (h-1))
the honest norm standard deviation (see byzlearn/attacks/matrix.py and docs/attacks.md).

    python benchmarks/attack_matrix.py                     # n=25, f=5, d=1000, seed 0
    python benchmarks/attack_matrix.py --markdown --d 10000 --rules krum,bulyan
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
from _common import MAX_THREADS, at_least, check_memory, refused

from byzlearn.attacks.matrix import attack_matrix, format_matrix
from byzlearn.machine import cpu_name


def machine() -> str:
    """A one-line description of where the table was computed."""
    cpu = cpu_name()
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, {cpu}, "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )


def set_threads(threads: int) -> None:
    """Use ``threads`` threads (the coordinate-wise rules' numba kernel follows torch's count)."""
    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=at_least(3), default=25)
    p.add_argument("--f", type=at_least(0), default=5)
    p.add_argument("--d", type=at_least(1), default=1000)
    p.add_argument("--seed", type=at_least(0, 2**63 - 1), default=0)
    p.add_argument("--signal", type=float, default=1.0, help="honest mean = signal * ones")
    p.add_argument("--attacks", default=None, help="comma-separated (default: all + 'none')")
    p.add_argument("--rules", default=None, help="comma-separated (default: the 12 of the table)")
    p.add_argument(
        "--evaluations", type=at_least(1), default=None, help="search budget of rule-aware attacks"
    )
    p.add_argument("--threads", type=at_least(1, MAX_THREADS), default=1)
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    a = p.parse_args(argv)
    # float64 (n, d) values held at once: the honest and baseline draws, a cell's input, the
    # rule's (or a rule-aware attack's) work on it
    check_memory(p, 4 * 8 * a.n * a.d, f"n={a.n} x d={a.d}")
    set_threads(a.threads)
    attacks = a.attacks.split(",") if a.attacks else None
    rules = a.rules.split(",") if a.rules else None
    options = None
    if a.evaluations is not None:
        import byzlearn.attacks as atk

        options = {name: {"evaluations": a.evaluations} for name in atk.names("rule_aware")}
    where = machine()
    start = time.perf_counter()
    try:  # its inputs are checked before any work; a cell's own failure is reported in it
        r = attack_matrix(
            attacks,
            rules,
            n=a.n,
            f=a.f,
            d=a.d,
            seed=a.seed,
            signal=a.signal,
            attack_options=options,
        )
    except (ValueError, KeyError) as err:
        return refused(err)
    total = time.perf_counter() - start
    print(
        f"# attack matrix: n={r['n']} f={r['f']} d={r['d']} seed={r['seed']} "
        f"signal={r['signal']} honest norm std s={r['honest_std']:.2f}"
    )
    print(f"# cell = ||aggregate - honest mean|| / s; inf = non-finite aggregate; {where}")
    print(format_matrix(r, markdown=a.markdown))
    for (attack, rule), msg in r["errors"].items():
        print(f"# error {attack} x {rule}: {msg}")
    print(f"# {total:.1f} s (torch threads after the run: {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
