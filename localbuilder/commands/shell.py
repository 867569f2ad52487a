"""``localbuilder shell SOURCE [-- COMMAND…]``: boot a throw-away guest and get a shell (or run one command).

The guest boots from a qcow2 overlay (the source image is never written) and is discarded at the end:
powered off, overlay and keys deleted. Exit status: the command's exit status (or the interactive
shell's), 1 when the guest could not be reached, 130 on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import select
import shlex
import shutil
import signal
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import paramiko

from localbuilder import paths
from localbuilder.catalog import Catalog, classify_id
from localbuilder.commands import Parser
from localbuilder.diskformat import detect_format
from localbuilder.errors import CatalogError, CommunicatorError, UsageError
from localbuilder.guest.bootwatch import DEFAULT_BOOT_TIMEOUT
from localbuilder.guest.linux import LinuxGuest, linux_guest
from localbuilder.hypervisor import BACKENDS
from localbuilder.hypervisor.probe import resolve_accel
from localbuilder.hypervisor.sizes import guest_shape
from localbuilder.hypervisor.spec import NetworkMode
from localbuilder.log import format_duration
from localbuilder.template.model import OsType

log = logging.getLogger("localbuilder.commands.shell")

NAME = "shell"
HELP = "boot a source image in a throw-away guest and open a shell or run a command in it"
DESCRIPTION = (
    "Boot SOURCE — a catalog URN (Debian:debian-12:12:latest), a managed image or gallery image version "
    "resource id, or a disk image file — in a temporary guest with cloud-init, connect over SSH (pinned host "
    "key, fresh build key), then run COMMAND (its exit status is passed through) or an interactive shell. "
    "The guest and its overlay are discarded afterwards; the source image is never written. Linux only."
)
DEFAULT_SIZE = "Standard_D2s_v3"  # 2 vCPUs: FACTS §3b, multi-threaded TCG boots ~25 % faster than 1


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hypervisor", choices=[b for b in BACKENDS if b != "fake"], default="qemu",
                        help="direct qemu (default, no daemon) or libvirt")
    parser.add_argument("--libvirt-uri", metavar="URI", help="libvirt connection URI (default qemu:///system)")
    parser.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto",
                        help="accelerator; auto probes KVM and falls back to TCG (default auto)")
    parser.add_argument("--size", metavar="VMSIZE", default=DEFAULT_SIZE,
                        help=f"Azure VM size for vCPUs/memory, capped to this host (default {DEFAULT_SIZE})")
    parser.add_argument("--network", action="store_true",
                        help="give the guest outbound network access (default: isolated, SSH forward only)")
    parser.add_argument("--boot-timeout", type=float, default=DEFAULT_BOOT_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for SSH (default {DEFAULT_BOOT_TIMEOUT}, AIB's 20 minutes)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="catalog URN, image resource id, or a disk image file")
    _add_options(parser)
    # argparse cannot take options between SOURCE and a trailing "-- COMMAND" when both are positionals
    # (the command is matched, empty, together with SOURCE). So everything after SOURCE is collected here
    # and split in split_command(): options up to "--", the command after it.
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="[-- COMMAND …]",
                        help="command to run in the guest (default: an interactive shell)")


def split_command(args: argparse.Namespace) -> list[str]:
    """Apply options given after SOURCE to ``args``; return the command (what follows ``--``)."""
    rest = list(args.rest)
    if "--" in rest:
        cut = rest.index("--")
        options, command = rest[:cut], rest[cut + 1:]
    elif rest and not rest[0].startswith("-"):
        # argparse itself swallows a "--" that directly follows SOURCE: what remains is the command.
        options, command = [], rest
    else:
        options, command = rest, []
    if options:
        late = Parser(prog="localbuilder shell", argument_default=argparse.SUPPRESS, add_help=False)
        _add_options(late)
        for action in late._actions:
            action.default = argparse.SUPPRESS  # only what is given overrides the earlier parse
        try:
            late.parse_args(options, namespace=args)
        except UsageError as exc:
            raise UsageError(exc.message, hint="Put the command after '--': localbuilder shell SOURCE "
                             "[options] -- COMMAND …") from exc
    return command


def resolve_source(source: str) -> tuple[Path, str]:
    """(image path, qemu format) for a file path, a catalog URN or a resource id."""
    candidate = Path(source).expanduser()
    if candidate.exists():
        if not candidate.is_file():
            raise UsageError(f"SOURCE {source} is not a file",
                             hint="Give a disk image file, a URN or a resource id.")
        fmt, _ = detect_format(candidate)
        return candidate.absolute(), fmt.value
    catalog = Catalog()
    if source.startswith("/subscriptions/"):
        image = catalog.resolve_id(source, classify_id(source))
    elif source.count(":") == 3:
        image = catalog.resolve_urn(source)
    else:
        raise UsageError(f"SOURCE {source!r} is neither an existing file, a URN "
                         "(publisher:offer:sku:version) nor a resource id (/subscriptions/…)",
                         hint="Check the path, or list registered images with `localbuilder image list`.")
    if image.os is OsType.windows:
        raise CatalogError(f"{source} is a Windows image; `localbuilder shell` speaks SSH to Linux only",
                           hint="Use `localbuilder build` for Windows templates.")
    return image.path, image.format.value


@contextlib.contextmanager
def _raw_tty() -> Iterator[None]:
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def interactive(lg: LinuxGuest) -> int:
    """A login shell over a second SSH connection (pinned to the same host key), the local TTY raw."""
    client = paramiko.SSHClient()
    for line in lg.host_keys:
        key_type, b64 = line.split()[:2]
        client.get_host_keys().add(f"[{lg.host}]:{lg.port}", key_type,
                                   paramiko.PKey.from_type_string(key_type, base64.b64decode(b64)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(lg.host, lg.port, username=lg.user, key_filename=str(lg.key_file),
                       allow_agent=False, look_for_keys=False, timeout=30)
    except (paramiko.SSHException, OSError) as exc:
        raise CommunicatorError(f"interactive SSH connection to {lg.user}@{lg.host}:{lg.port} failed: {exc}",
                                hint=f"Try by hand: {lg.ssh_command()}") from exc
    try:
        size = shutil.get_terminal_size()
        chan = client.invoke_shell(term=os.environ.get("TERM", "xterm"), width=size.columns,
                                   height=size.lines)

        def on_winch(signum: int, frame: FrameType | None) -> None:
            s = shutil.get_terminal_size()
            with contextlib.suppress(paramiko.SSHException):
                chan.resize_pty(width=s.columns, height=s.lines)

        old = signal.signal(signal.SIGWINCH, on_winch)
        try:
            with _raw_tty():
                stdin = sys.stdin.fileno()
                while True:
                    readable, _, _ = select.select([chan, stdin], [], [])
                    if chan in readable:
                        data = chan.recv(32768)
                        if not data:
                            break
                        os.write(sys.stdout.fileno(), data)
                    if stdin in readable:
                        data = os.read(stdin, 4096)
                        if not data:
                            chan.shutdown_write()
                        else:
                            chan.sendall(data)
        finally:
            signal.signal(signal.SIGWINCH, old)
        return chan.recv_exit_status()
    finally:
        client.close()


def run(args: argparse.Namespace) -> int:
    command = split_command(args)
    if not command and not sys.stdin.isatty():
        raise UsageError("no COMMAND given and stdin is not a terminal",
                         hint="Run a command with: localbuilder shell SOURCE -- COMMAND…")
    base, fmt = resolve_source(args.source)
    accel = resolve_accel(args.accel)
    shape = guest_shape(args.size)
    workroot = paths.ensure_private_dir(paths.home() / "shell")
    workdir = Path(tempfile.mkdtemp(prefix="lb-shell-", dir=workroot))
    timings: dict[str, float] = {}
    status = 1
    try:
        with linux_guest(base, fmt, workdir=workdir, backend=args.hypervisor, accel=accel, cpus=shape.cpus,
                         memory_mib=shape.memory_mib, libvirt_uri=args.libvirt_uri,
                         network=NetworkMode.user if args.network else NetworkMode.restricted,
                         boot_timeout=args.boot_timeout) as lg:
            timings = lg.timings
            start = time.monotonic()
            if command:
                def echo(stream: str, line: str) -> None:
                    out = sys.stdout if stream == "stdout" else sys.stderr
                    out.write(line + "\n")
                    out.flush()

                result = lg.communicator.run(shlex.join(command), on_output=echo)
                status = result.exit_status
            else:
                status = interactive(lg)
            timings["command"] = time.monotonic() - start
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    order = [("ssh", "boot to SSH"), ("cloud-init", "cloud-init"), ("command", "command"),
             ("shutdown", "power-off")]
    shown = ", ".join(f"{label} {format_duration(timings[k])}" for k, label in order if k in timings)
    print(f"timings: {shown}", file=sys.stderr)
    return status
