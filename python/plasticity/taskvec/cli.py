"""``plasticity tv merge|diff|delta``: task-vector arithmetic on safetensors files."""

from __future__ import annotations

import argparse
import json
import sys


def _floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def add_parser(sub) -> None:
    tv = sub.add_parser("tv", help="task vectors: merge (TIES / task arithmetic), diff, delta")
    tsub = tv.add_subparsers(dest="tv_cmd", required=True)

    m = tsub.add_parser(
        "merge", help="merge fine-tuned models or task vectors into a base: OUT = BASE + merged delta",
        description="OUT = BASE + merged delta, written atomically in BASE's dtypes, one tensor at a time. "
                    "TIES follows mergekit 0.1.5's per-tensor semantics (see docs/task-vectors.md).")
    m.add_argument("--method", required=True, choices=["ties", "task_arithmetic"])
    m.add_argument("--base", required=True, help="base model .safetensors")
    m.add_argument("inputs", nargs="+", help="fine-tuned models (or task vectors with --inputs-are-deltas)")
    m.add_argument("-o", "--output", required=True, help="output .safetensors (created atomically)")
    m.add_argument("--density", type=float, default=None,
                   help="ties: fraction of each tensor's largest |delta| kept per input, in (0, 1] "
                        "(default 0.2; mergekit's default is 1.0 = no trimming)")
    m.add_argument("--weights", type=_floats, default=None, help="w1,w2,...: one per input (default all 1)")
    m.add_argument("--lambda", dest="lam", type=float, default=1.0, help="scale of the merged delta (default 1)")
    norm = m.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                      help="divide by the (agreeing) weights' sum (default: on for ties, off for task_arithmetic)")
    norm.add_argument("--no-normalize", dest="normalize", action="store_false")
    m.add_argument("--variant", default="mergekit", choices=["mergekit", "paper"],
                   help="ties: mergekit's per-tensor trim (default) or the TIES paper's model-wide trim")
    m.add_argument("--inputs-are-deltas", action="store_true", help="the inputs are task vectors, not models")
    m.add_argument("--precision", default="float32", choices=["float32", "float64"],
                   help="dtype of the deltas and the merge math (float32 = mergekit's arithmetic)")
    m.set_defaults(func=run_merge)

    d = tsub.add_parser("diff", help="per-tensor norms and cosine between two task vectors")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--base", default=None, help="A and B are fine-tuned models; diff their deltas against BASE")
    d.add_argument("--per-layer", action="store_true", help="aggregate tensors by transformer layer")
    d.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    d.set_defaults(func=run_diff)

    x = tsub.add_parser("delta", help="write the task vector MODEL - BASE (exact by default)")
    x.add_argument("model")
    x.add_argument("--base", required=True)
    x.add_argument("-o", "--output", required=True)
    x.add_argument("--precision", default=None, choices=["float32", "float64"],
                   help="default: float64 for float32 weights, float32 for 16-bit ones (exact)")
    x.set_defaults(func=run_delta)


def _fail(cmd: str, e: Exception) -> int:
    print(f"plasticity tv {cmd}: error: {e}", file=sys.stderr)
    return 2


def run_merge(args: argparse.Namespace) -> int:
    from .files import TaskVectorError
    from .merge import merge_files

    try:
        s = merge_files(args.method, args.base, args.inputs, args.output, density=args.density,
                        weights=args.weights, lam=args.lam, inputs_are_deltas=args.inputs_are_deltas,
                        normalize=args.normalize, precision=args.precision, variant=args.variant)
    except TaskVectorError as e:
        return _fail("merge", e)
    opts = f"density {s['density'][0] if s['density'] else '-'}, weights {s['weights']}, lambda {s['lambda']}, " \
           f"normalize {s['normalize']}"
    print(f"wrote {s['output']}: {s['method']} of {len(args.inputs)} inputs ({opts}), {s['tensors']} tensors")
    if s.get("straddling_ties"):
        print(f"note: {s['straddling_ties']} (tensor, input) trims cut through equal magnitudes; "
              "the lowest indices were kept")
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from .files import TaskVectorError
    from .merge import diff_files

    try:
        rows = diff_files(args.a, args.b, base_path=args.base, per_layer=args.per_layer)
    except TaskVectorError as e:
        return _fail("diff", e)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    w = max(len(r["name"]) for r in rows)
    print(f"{'tensor':<{w}}  {'numel':>10}  {'|a|':>12}  {'|b|':>12}  {'|a-b|':>12}  {'cosine':>9}")
    for r in rows:
        cos = "-" if r["cosine"] is None else f"{r['cosine']:+.6f}"
        print(f"{r['name']:<{w}}  {r['numel']:>10}  {r['norm_a']:>12.6g}  {r['norm_b']:>12.6g}  "
              f"{r['norm_diff']:>12.6g}  {cos:>9}")
    return 0


def run_delta(args: argparse.Namespace) -> int:
    from .files import TaskVectorError
    from .merge import write_delta_file

    try:
        s = write_delta_file(args.model, args.base, args.output, precision=args.precision)
    except TaskVectorError as e:
        return _fail("delta", e)
    print(f"wrote {s['output']}: {s['tensors']} tensors")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m plasticity.taskvec.cli tv ...``), for tests."""
    parser = argparse.ArgumentParser(prog="plasticity")
    add_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
