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
    "dagger_runs",
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
    except OSError as error:  # the file system refused a path the user gave: name it and say what to do
        print(f"alfworld-sft {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 2


def describe_os_error(error: OSError) -> str:
    """What a file-system error means for a path given on the command line, and what to do about it."""
    path = error.filename or "a path"
    if isinstance(error, IsADirectoryError):
        return f"{path} is a folder where a file is expected: give the file's path"
    if isinstance(error, NotADirectoryError | FileExistsError):
        return f"{path}: part of this path is a file where a folder is expected: give a folder, or another path"
    if isinstance(error, PermissionError):
        return f"{path} cannot be used here (permission denied): choose a path you can write, or fix its permissions"
    return f"{path}: {error.strerror or error}"


if __name__ == "__main__":
    sys.exit(main())
