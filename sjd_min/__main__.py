"""``python -m sjd_min generate ...``: see sjd_min/generate.py."""

import argparse
import sys

from .generate import add_generate_args, run_generate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sjd_min", description="Speculative Jacobi decoding for AR text-to-image models")
    sub = ap.add_subparsers(dest="command", required=True)
    add_generate_args(sub.add_parser("generate", help="prompts -> images with AR, SJD or a coupled mode"))
    args = ap.parse_args(argv)
    if args.command == "generate":
        return run_generate(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
