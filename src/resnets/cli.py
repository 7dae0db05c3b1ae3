"""`resnets <job>`: one subcommand per job, each a thin wrapper over a library function."""

import argparse
import json
import sys
import traceback

from .errors import UserError


def cmd_summary(args) -> None:
    from .models import list_models
    from .summary import markdown_table, summarize_preset

    names = args.names or list_models()
    summaries = [summarize_preset(name, args.input_size) for name in names]
    if args.json:
        out = [s.to_dict() for s in summaries]
        print(json.dumps(out[0] if len(out) == 1 else out))
    elif len(summaries) == 1:
        s = summaries[0]
        print(f"{s.name}: {s.params:,} parameters, {s.macs / 1e9:.3f} x10^9 multiply-adds at {s.input_size}x{s.input_size}")
        for stage, shape in s.shapes:
            print(f"  {stage:<8} {' x '.join(map(str, shape))}")
    else:
        print(markdown_table(summaries))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnets", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")

    p = jobs.add_parser("summary", help="parameters, multiply-adds and stage shapes of presets")
    p.add_argument("names", nargs="*", metavar="NAME", help="preset names (default: all)")
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels (default 224 / 32)")
    p.add_argument("--json", action="store_true", help="print JSON (one object for one name)")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"resnets {args.job}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnets {args.job}: interrupted", file=sys.stderr)
        return 130
    return 0
