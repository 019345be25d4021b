"""``plasticity steer extract``: contrastive pairs → a control-vector file."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    steer = sub.add_parser("steer", help="steering vectors")
    ssub = steer.add_subparsers(dest="steer_cmd", required=True)
    ex = ssub.add_parser("extract", help="extract a vector from contrastive pairs (repeng conventions)")
    ex.add_argument("--model", required=True, help="model folder (transformers format)")
    ex.add_argument("--pairs", required=True, help='JSONL, one {"positive": ..., "negative": ...} per line')
    ex.add_argument("--method", default="pca_diff", choices=["mean_diff", "pca_diff", "pca_center"])
    ex.add_argument("--layers", default=None, help='"default" (all but block 0), "all", "2,3", "1-3", "-1"')
    ex.add_argument("--batch-size", type=int, default=32)
    ex.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ex.add_argument("-o", "--output", required=True, help="output .gguf or .safetensors")
    ex.set_defaults(func=run_extract)
    ti = ssub.add_parser("train-in", help="train a registered steering vector into the live weights (server)")
    ti.add_argument("--server", required=True, help="base URL of a plasticity server with [training] enabled")
    ti.add_argument("--api-key", default=None)
    ti.add_argument("--vector", required=True, help="a vector registered on the server")
    ti.add_argument("--scale", type=float, required=True)
    ti.add_argument("--layers", default=None, help="comma-separated block indices (default: the vector's)")
    ti.add_argument("--prompts", required=True, help="training prompts: JSONL {prompt} or one per line")
    ti.add_argument("--heldout", required=True, help="held-out prompts for the KL report")
    ti.add_argument("--max-tokens", type=int, default=24)
    ti.add_argument("--epochs", type=int, default=2, help="passes over the prompts per round (default 2)")
    ti.add_argument("--until-kl-ratio", type=float, default=None, metavar="R",
                    help="train further rounds until KL(after) <= R * KL(before), R in (0, 1)")
    ti.add_argument("--max-rounds", type=int, default=1, help="at most this many rounds (default 1)")
    ti.add_argument("--drop", action="store_true", help="remove the vector from the server afterwards")
    ti.add_argument("-o", "--output", default=None, help="write the JSON report here")
    ti.set_defaults(func=run_train_in)


def run_train_in(args: argparse.Namespace) -> int:
    import json
    import math

    from .train_in import Client, ServerError, read_prompts, train_in

    if not math.isfinite(args.scale) or args.epochs < 1 or args.max_tokens < 1 or args.max_rounds < 1:
        print("plasticity steer train-in: --scale must be finite, --epochs, --max-tokens and --max-rounds ≥ 1",
              file=sys.stderr)
        return 2
    if args.until_kl_ratio is not None and not (0 < args.until_kl_ratio < 1):
        print("plasticity steer train-in: --until-kl-ratio must be in (0, 1)", file=sys.stderr)
        return 2
    try:
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
        client = Client(args.server, args.api_key)
        rep = train_in(client, args.vector, args.scale, read_prompts(args.prompts), read_prompts(args.heldout),
                       max_tokens=args.max_tokens, epochs=args.epochs, layers=layers, drop=args.drop,
                       until=args.until_kl_ratio, max_rounds=args.max_rounds)
    except (ValueError, ServerError, OSError) as e:
        print(f"plasticity steer train-in: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rep, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rep, f, indent=1)
    return 0


def run_extract(args: argparse.Namespace) -> int:
    from . import extract as ex
    from .files import save_gguf, save_safetensors
    from .spec import SteeringError

    try:
        pairs = ex.load_pairs(args.pairs)
        model, tok = ex.load_model(args.model, args.dtype)
        layers = ex.parse_layers(args.layers, model.config.get_text_config().num_hidden_layers)
        dirs = ex.extract(model, tok, pairs, method=args.method, layers=layers, batch_size=args.batch_size)
    except SteeringError as e:
        print(f"plasticity steer extract: {e}", file=sys.stderr)
        return 2
    hint = model.config.model_type
    if args.output.endswith(".safetensors"):
        save_safetensors(args.output, dirs, hint)
    else:
        save_gguf(args.output, dirs, hint)
    print(f"wrote {args.output}: {args.method}, layers {sorted(dirs)}")
    return 0
