"""``plasticity snapshot``: the server's snapshot routes from the command line.

    plasticity snapshot save NAME [--note TEXT]        POST /v1/snapshots
    plasticity snapshot list                           GET  /v1/snapshots
    plasticity snapshot show NAME                      GET  /v1/snapshots/NAME
    plasticity snapshot rollback base|NAME             POST /v1/rollback
    plasticity snapshot apply --method M NAME...       POST /v1/snapshots/apply
    plasticity snapshot export NAME --lora ...         (offline) a PEFT LoRA adapter folder

Every server command takes ``--server URL`` and ``--api-key`` (default ``$PLASTICITY_API_KEY``).
The server checks every argument before it changes a weight; its 4xx message is printed and the
command exits 2. ``export`` reads the snapshot folder on disk (``--snapshot-dir``) and needs no
server; a refused export also exits 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import urllib.parse

METHODS = ("add", "negate", "task_arithmetic", "ties")


def add_parser(sub) -> None:
    sn = sub.add_parser("snapshot", help="snapshots of the live model on a server: save, list, show, rollback, apply")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", required=True, help="base URL of a plasticity server with [training] enabled")
    common.add_argument("--api-key", default=os.environ.get("PLASTICITY_API_KEY"),
                        help="the server's API key (default $PLASTICITY_API_KEY)")
    common.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the server (default 1800)")
    ssub = sn.add_subparsers(dest="snapshot_cmd", required=True)
    p = ssub.add_parser("save", parents=[common], help="save the task vector W_live - W_base under NAME")
    p.add_argument("name")
    p.add_argument("--note", default=None)
    p = ssub.add_parser("list", parents=[common], help="the snapshots, the current one, how the base is kept")
    p = ssub.add_parser("show", parents=[common], help="one snapshot's metadata")
    p.add_argument("name")
    p = ssub.add_parser("rollback", parents=[common], help="live weights := base or a snapshot, bit-identical")
    p.add_argument("to", help='"base" or a snapshot name')
    p = ssub.add_parser("apply", parents=[common], help="compose snapshots onto the live model")
    p.add_argument("--method", required=True, choices=METHODS,
                   help="add / negate (live += s*tau of one snapshot); task_arithmetic / ties (live := base + merge)")
    p.add_argument("snapshots", nargs="+", metavar="NAME")
    p.add_argument("--scale", type=float, default=None, help="add: live += SCALE * tau (default 1)")
    p.add_argument("--weights", default=None, help="comma-separated, one per snapshot (default 1 each)")
    p.add_argument("--lambda", dest="lam", type=float, default=None, help="scale of the merged delta (default 1)")
    p.add_argument("--density", type=float, default=None, help="ties: fraction kept per tensor, in (0, 1]")
    p.add_argument("--normalize", default=None, choices=["true", "false"],
                   help="divide by the sum of weights (mergekit's default: true for ties, false for task arithmetic)")
    p.add_argument("--relative-to", default=None, metavar="R",
                   help="merge relative to snapshot R: live := base + tau_R + merge(tau_i - tau_R)")
    p = ssub.add_parser("export", help="write a snapshot's task vector as a PEFT LoRA adapter (truncated SVD)",
                        description="Each trained matrix's delta becomes lora_B @ lora_A, its truncated SVD, with "
                                    "its own rank. The report (printed, and export_report.json in the folder) gives "
                                    "the rank and relative Frobenius error per matrix and overall.")
    p.add_argument("name")
    p.add_argument("--lora", action="store_true", required=True, help="the export format (the only one today)")
    p.add_argument("--snapshot-dir", required=True, help="the server's [training] snapshot_dir")
    p.add_argument("-o", "--output", required=True, help="adapter folder to create (must not exist)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--rank", type=int, default=None, help="the same rank for every matrix, 1..min(out, in)")
    how.add_argument("--energy", type=float, default=None,
                     help="per matrix, the fewest directions keeping this share of ||delta||^2, in (0, 1] "
                          "(default 0.99)")
    p.add_argument("--max-rank", type=int, default=None, help="cap on every matrix's rank")
    p.add_argument("--max-left-out", type=float, default=None,
                   help="refuse when tensors LoRA cannot carry (norms, embeddings) hold more than this share of "
                        "the delta's norm (default 0.05)")
    p.add_argument("--model", default=None,
                   help="the base model folder (default: the one the snapshot records); every tensor must match it")
    sn.set_defaults(func=run)


def _body(args) -> tuple[str, dict | None]:
    cmd = args.snapshot_cmd
    if cmd == "save":
        return "/v1/snapshots", {"name": args.name, **({"note": args.note} if args.note is not None else {})}
    if cmd == "list":
        return "/v1/snapshots", None
    if cmd == "show":
        return "/v1/snapshots/" + urllib.parse.quote(args.name, safe=""), None
    if cmd == "rollback":
        return "/v1/rollback", {"to": args.to}
    m = args.method
    if m in ("add", "negate"):
        if len(args.snapshots) != 1:
            raise ValueError(f"--method {m} takes exactly one snapshot")
        if any(v is not None for v in (args.weights, args.lam, args.density, args.normalize, args.relative_to)):
            raise ValueError(f"--method {m} takes only --scale")
        if m == "negate" and args.scale is not None:
            raise ValueError("--method negate takes no --scale (it is -1)")
        body = {"method": m, "snapshot": args.snapshots[0]}
        if args.scale is not None:
            body["scale"] = args.scale
        return "/v1/snapshots/apply", _finite(body)
    if args.scale is not None:
        raise ValueError(f"--scale is for add; {m} takes --weights and --lambda")
    body = {"method": m, "snapshots": list(args.snapshots)}
    if args.weights is not None:
        try:
            body["weights"] = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ValueError(f"--weights must be comma-separated numbers, got {args.weights!r}") from None
    if args.lam is not None:
        body["lambda"] = args.lam
    if args.density is not None:
        body["density"] = args.density
    if args.normalize is not None:
        body["normalize"] = args.normalize == "true"
    if args.relative_to is not None:
        body["relative_to"] = args.relative_to
    return "/v1/snapshots/apply", _finite(body)


def _finite(body: dict) -> dict:
    for k, v in body.items():  # JSON has no NaN: refuse here instead of sending what the server cannot parse
        vals = v if isinstance(v, list) else [v]
        if any(isinstance(x, float) and not math.isfinite(x) for x in vals):
            raise ValueError(f"{k} must be finite")
    return body


def run_export(args: argparse.Namespace) -> int:
    from .lora import DEFAULT_MAX_LEFT_OUT, LoraExportError, RankChoice, export_snapshot

    energy = args.energy if args.energy is not None or args.rank is not None else 0.99
    try:
        choice = RankChoice(rank=args.rank, energy=energy, max_rank=args.max_rank,
                            max_left_out=DEFAULT_MAX_LEFT_OUT if args.max_left_out is None else args.max_left_out)
        report = export_snapshot(args.snapshot_dir, args.name, args.output, choice, model_dir=args.model)
    except LoraExportError as e:
        print(f"plasticity snapshot export: {e}", file=sys.stderr)
        return 2
    short = {k: report[k] for k in ("snapshot", "out", "rel_error", "rel_error_lora_modules", "left_out_share",
                                    "ranks", "adapter_params", "seconds")}
    short["left_out"] = [x["name"] for x in report["left_out"]]
    short["unchanged"] = len(report["unchanged"])
    short["worst_modules"] = [{k: m[k] for k in ("name", "rank", "rel_error")}
                              for m in sorted(report["modules"], key=lambda m: -m["rel_error"])[:5]]
    print(json.dumps(short, indent=1))
    return 0


def run(args: argparse.Namespace) -> int:
    from ..http.client import ClientError as EvalHTTPError
    from ..http.client import request_json

    if args.snapshot_cmd == "export":
        return run_export(args)
    try:
        path, body = _body(args)
        out = request_json(args.server.rstrip("/") + path, body, api_key=args.api_key, timeout=args.timeout)
    except (ValueError, EvalHTTPError) as e:
        print(f"plasticity snapshot {args.snapshot_cmd}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0
