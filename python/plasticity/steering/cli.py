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
