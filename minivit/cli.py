"""What every command line (``python -m minivit``, ``.train``, ``.evaluate``, ``.bench``,
``.complexity``) shares: a user's mistake ends the same way everywhere.

A mistake in the command line or its inputs (a bad flag value, a missing file, ``--device cuda``
on a machine without CuPy or a GPU) prints one line, ``error: <what was wrong and how to fix
it>``, on stderr and exits with code 2, as argparse itself does; no traceback. Anything else
(a bug) still shows its traceback. The helpers:

    fail("--steps must be at least 1, got 0")     # print the line and exit 2
    raise UsageError("...")                        # the same, from deeper code; run_cli prints it
    device = check_device(args.device)             # "--device cuda: CuPy found no GPU ..."
    check_positive(args, "steps", "batch_size")    # names the first flag that is not >= 1
    return run_cli(_main, argv, errors=(CheckpointError,))

This module sits just above ``backend`` in the layering and imports nothing else of minivit.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import NoReturn

from minivit import backend

EXIT_USAGE = 2      # argparse's code for a bad command line; every minivit CLI uses it for bad input


class UsageError(ValueError):
    """A mistake in the command line; the message names the flag and the fix."""


def fail(message) -> NoReturn:
    """Print ``error: message`` (one line) on stderr and exit with code 2."""
    text = " ".join(str(message).split())          # one line, whatever the message held
    print(f"error: {text}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with its errors in the same one-line form as every other mistake.

    argparse prints the usage and then ``prog: error: ...``; here it is only
    ``error: argument --device: invalid choice: 'gpu' (choose from cpu, cuda); see python -m X --help``."""

    def error(self, message) -> NoReturn:
        fail(f"{message}; see {self.prog} --help")


def check_device(device: str, flag: str = "--device") -> str:
    """``backend.check_device`` for a command line: a device that is not there (no CuPy, no GPU,
    a CUDA library missing) becomes a UsageError naming the flag."""
    try:
        return backend.check_device(device)
    except (RuntimeError, ValueError) as e:   # backend.DeviceError is a RuntimeError
        # backend speaks Python (device='cpu'); a command line's reader needs the flag
        message = re.sub(r"device\s*=\s*['\"]cpu['\"]", "--device cpu", str(e))
        if device != "cpu" and "--device cpu" not in message:
            message = f"{message.rstrip('.')}; or run on the CPU with --device cpu"
        raise UsageError(f"{flag} {device}: {message}") from None


def check_positive(args, *names: str, minimum: int = 1):
    """Every ``args.<name>`` that is set must be >= minimum; the error names the first flag that is not."""
    for name in names:
        value = getattr(args, name) if not isinstance(args, dict) else args[name]
        if value is not None and value < minimum:
            raise UsageError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def run_cli(main, *args, errors: tuple = (), **kwargs):
    """``main(*args, **kwargs)``; a UsageError, ValueError or one of ``errors`` (the command's own
    error types: a bad checkpoint, a missing dataset) becomes ``error: ...`` and exit code 2."""
    try:
        return main(*args, **kwargs)
    except (ValueError, *errors) as e:
        fail(e)
