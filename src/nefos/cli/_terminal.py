"""A terminal of the SDK (:class:`nefos.sdk.Terminal`) on this process's terminal:
what is typed goes in, what it shows comes out, until it ends."""

from __future__ import annotations

import os
import sys
import termios
import threading
import time
import tty

from nefos.sdk import Terminal

#: Ctrl-], as telnet and ``virsh console`` use it: leave a console.
DETACH = b"\x1d"


def attach(
    term: Terminal, *, detach: bytes | None = None, linger: float | None = None
) -> int | None:
    """Type stdin into ``term`` and print what it shows until it ends; its exit code.

    Interactive when stdin is a terminal (raw mode; ``detach``, if given, hangs up).
    Otherwise stdin is typed in, then the end of input is a Ctrl-D, or with
    ``linger`` (a console, which does not end with its input) what comes during that
    many seconds is printed and the terminal hung up."""
    interactive = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin) if interactive else None

    def typing() -> None:
        try:
            if interactive:
                fd = sys.stdin.fileno()
                while chunk := os.read(fd, 4096):
                    if detach and detach in chunk:
                        before = chunk.split(detach, 1)[0]
                        if before:
                            term.send(before)
                        term.close()
                        return
                    term.send(chunk)
            else:
                source = sys.stdin.buffer
                read = getattr(source, "read1", source.read)
                while chunk := read(4096):
                    term.send(chunk)
            if interactive:
                return
            if linger is None:
                term.send(b"\x04")  # end of input, as a terminal's Ctrl-D
            else:
                time.sleep(linger)
                term.close()
        except Exception:  # the terminal ended meanwhile
            return

    if saved is not None:
        tty.setraw(sys.stdin.fileno())
    try:
        threading.Thread(target=typing, daemon=True, name="nefos-terminal-stdin").start()
        out = sys.stdout.buffer
        while (chunk := term.recv()) is not None:
            out.write(chunk)
            out.flush()
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
    return term.exit_code
