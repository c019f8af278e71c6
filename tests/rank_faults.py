"""``langprune`` under torchrun with one rank made faulty on purpose, for the distributed tests.

    torchrun --nproc-per-node 2 tests/rank_faults.py [--seed-on-rank1 N] [--rank1-dies-at-block K] prune ...

``--seed-on-rank1`` gives rank 1 another ``--seed`` (ranks that disagree on settings); ``--rank1-dies-at-block``
kills rank 1 outright (``os._exit``) when it reaches that block, as an out-of-memory kill would.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    args = sys.argv[1:]
    rank = int(os.environ.get("RANK", "0"))
    if args[:1] == ["--seed-on-rank1"]:
        seed, args = args[1], args[2:]
        if rank == 1:
            args += ["--seed", seed]
    if args[:1] == ["--rank1-dies-at-block"]:
        block, args = int(args[1]), args[2:]
        if rank == 1:
            from langprune.compress import loop

            original = loop._prune_block

            def dying(engine, index, *rest, **options):
                if index == block:
                    os._exit(9)
                return original(engine, index, *rest, **options)

            loop._prune_block = dying
    sys.argv = ["langprune", *args]
    from langprune.cli import main as langprune_main

    langprune_main()


if __name__ == "__main__":
    main()
