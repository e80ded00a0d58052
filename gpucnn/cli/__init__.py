"""The ``gpucnn`` command: one command, a subcommand for each job.

    gpucnn train [OPTIONS]                   download, train, evaluate: the main job
    gpucnn evaluate CHECKPOINT [OPTIONS]     a checkpoint on its dataset's test set
    gpucnn predict --checkpoint CKPT IMAGE...   classify image files
    gpucnn export CHECKPOINT PATH            the model as an ONNX file
    gpucnn sweep --grid FIELD=V1,V2 ...      one training trial per combination
    gpucnn doctor                            what this machine offers gpucnn, checked

``gpucnn COMMAND --help`` lists a command's options. Each subcommand is also a module
(``python -m gpucnn.flows.train``, ``gpucnn.flows.evaluate``, ``gpucnn.flows.sweep``,
``gpucnn.predict``, ``gpucnn.doctor``), with the same options and exit statuses;
``python -m gpucnn`` is this command.

The command-line plumbing lives here: :mod:`gpucnn.cli.run` (exit statuses, one-line
failures, signals), :mod:`gpucnn.cli.config` (a TrainConfig from options). Nothing here
imports Prefect: a command starts it (gpucnn.flows) only when it runs a flow, so every
``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name: (the module whose main(argv, prog) runs it, what it does)
COMMANDS = {
    "train": ("gpucnn.cli.train", "download, train, evaluate: the main job (resumes a run)"),
    "evaluate": ("gpucnn.cli.evaluate", "evaluate a checkpoint on its dataset's test set"),
    "predict": ("gpucnn.predict", "classify image files with a checkpoint"),
    "export": ("gpucnn.cli.export", "write a checkpoint's model as an ONNX file"),
    "sweep": ("gpucnn.cli.sweep", "a hyperparameter sweep: one training trial per combination"),
    "doctor": ("gpucnn.doctor", "versions, devices, known traps, every kernel checked here"),
}

EXIT_STATUS = (
    "exit status: the command's (COMMAND --help says which: 0 done, 1 a failure at run time, 2 "
    "a usage error, 130 and 143 interrupted; the doctor's 1: a check failed); 2 without a known "
    "COMMAND"
)


def parser(prog: str = "gpucnn") -> argparse.ArgumentParser:
    width = max(len(name) for name in COMMANDS)
    listing = "\n".join(f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items())
    ap = argparse.ArgumentParser(
        prog=prog,
        usage=f"{prog} [-h] [--version] COMMAND [ARGS...]",
        description="Convolutional neural networks from their mathematics: train them, evaluate\n"
        "and export them, classify images, and check this machine.\n\n"
        f"commands:\n{listing}\n\n'{prog} COMMAND --help' lists a command's options.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="store_true", help="print gpucnn's version and exit")
    ap.add_argument(
        "command", nargs="?", choices=list(COMMANDS), metavar="COMMAND", help="one of the above"
    )
    ap.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None, prog: str = "gpucnn") -> int:
    """The ``gpucnn`` command (the console script and ``python -m gpucnn``): runs the
    subcommand and returns its exit status."""
    ap = parser(prog)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        from gpucnn.version import __version__

        print(f"gpucnn {__version__}")
        return 0
    if args.command is None:  # what there is to run, as --help says it; a usage error
        ap.print_help(sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    return module.main(args.args, prog=f"{prog} {args.command}")
