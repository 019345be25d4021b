"""The ``plasticity`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `serve` forwards every other argument to vLLM untouched, so it bypasses argparse.
    if argv[:1] == ["serve"]:
        from .serve import main as serve_main

        return serve_main(argv[1:])
    parser = argparse.ArgumentParser(prog="plasticity", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="cmd")
    sub.add_parser("serve", help="vllm serve with the plasticity plugins: plasticity serve MODEL [vllm args] [--config F]")
    from .dream.cli import add_parser as add_dream
    from .eval.cli import add_parser as add_eval
    from .experiments.cli import add_parser as add_experiment
    from .memory.cli import add_parser as add_memory
    from .steering.cli import add_parser as add_steer
    from .taskvec.cli import add_parser as add_tv
    from .taskvec.snapshot_cli import add_parser as add_snapshot

    add_steer(sub)
    add_tv(sub)
    add_snapshot(sub)
    add_eval(sub)
    add_memory(sub)
    add_dream(sub)
    add_experiment(sub)
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if getattr(args, "func", None) is not None:
        return args.func(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
