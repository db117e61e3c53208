"""The `alfworld-sft` command: one subcommand per course stage.

    alfworld-sft --help
    alfworld-sft doctor              # 00: is this machine ready?
    alfworld-sft course --mode small # run every notebook headless

Each stage module registers its own subcommands through `configure_parser(subparsers)`; heavy imports
(torch, transformers, textworld) stay inside the functions so that `--help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Stage modules in course order; each one exposes configure_parser(subparsers).
STAGE_MODULES = (
    "environment",
    "models",
    "generate",
    "collect",
    "formatting",
    "training",
    "merge",
    "gguf",
    "evaluation",
    "dagger",
    "reports",
    "course",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alfworld-sft",
        description="A course from a bare machine to a fine-tuned LLM agent that plays ALFWorld.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in STAGE_MODULES:
        importlib.import_module(f"alfworld_sft.{name}").configure_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        # Errors the course raises carry their own advice; show it without a traceback.
        print(f"alfworld-sft {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
