"""An in-process SSH server on 127.0.0.1 for testing SSHCommunicator without a VM.

paramiko's server side runs a tiny command interpreter of our own (not a shell): commands are separated
by ``;`` and each is one of

    echo WORDS        WORDS + newline on stdout          err WORDS       the same on stderr
    exit N            end with exit status N             sleep S         wait S seconds
    hang              never end (until the server stops) flood MB        MB MiB of 100-byte lines
    longline N        N 'y' without a newline            invalid-utf8    bytes that are not UTF-8
    cat               copy stdin to stdout               count-stdin     print the number of stdin bytes
    interleave N      N lines each on stdout and stderr, alternating
    drop              print a line, then cut the whole connection (a crash or a reboot)
    nostatus          close the channel without an exit status (killed by a signal)
    whoami            the authenticated user name

SFTP is served from a directory on the host (``root``): remote ``/tmp/x`` is ``root/tmp/x``.
``TCPProxy`` sits in front of it to act like slirp before sshd listens (accept, stay silent, close) or
like a frozen guest (stop forwarding without closing).
"""

from __future__ import annotations

import errno
import os
import select
import shlex
import socket
import struct
import threading
import time
from pathlib import Path

import paramiko
from paramiko.common import MSG_CHANNEL_SUCCESS

SERVER_LOG = "tests.sshserver"


class _ServerTransport(paramiko.Transport):
    """A Transport that tells when it has answered a channel request.

    paramiko sends the reply to an exec request only after check_channel_exec_request() returns; a fast
    command running in its own thread could otherwise send its output, exit status and close first, and
    the client would see "Channel closed" instead of a success (a real sshd replies before it forks).
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._replied: dict[int, threading.Event] = {}
        self._replied_lock = threading.Lock()

    def replied(self, remote_chanid: int) -> threading.Event:
        with self._replied_lock:
            return self._replied.setdefault(remote_chanid, threading.Event())

    def _send_user_message(self, data: paramiko.Message) -> None:  # type: ignore[override]
        super()._send_user_message(data)
        raw = data.asbytes()
        if raw[:1] == bytes([MSG_CHANNEL_SUCCESS]):
            self.replied(struct.unpack(">I", raw[1:5])[0]).set()


class _Server(paramiko.ServerInterface):
    def __init__(self, owner: SSHTestServer) -> None:
        self.owner = owner
        self.user: str | None = None

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == self.owner.username and key.asbytes() in self.owner.authorized_blobs:
            self.user = username
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode("utf-8", errors="replace")
        self.owner.commands.append(text)
        thread = threading.Thread(
            target=self.owner._interpret, args=(channel, text, self.user), name="sshserver-exec", daemon=True
        )
        self.owner._threads.append(thread)
        thread.start()
        return True


class SSHTestServer:
    """Listens on 127.0.0.1 (random port) until stop(); every connection gets its own paramiko Transport."""

    def __init__(
        self, root: Path, host_key: paramiko.PKey, authorized: list[paramiko.PKey], username: str = "builder"
    ) -> None:
        self.root = root
        self.host_key = host_key
        self.authorized_blobs = {k.asbytes() for k in authorized}
        self.username = username
        self.commands: list[str] = []
        self.connections = 0
        self.sftp_enabled = True
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._transports: list[_ServerTransport] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept_loop, name="sshserver-accept", daemon=True)
        self._accepter.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            transport = _ServerTransport(sock)
            transport.set_log_channel(SERVER_LOG)
            transport.add_server_key(self.host_key)
            if self.sftp_enabled:
                transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _RootedSFTP, self.root)
            with self._lock:
                self._transports.append(transport)
            try:
                transport.start_server(event=threading.Event(), server=_Server(self))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    def drop_all(self) -> None:
        """Cut every connection at the socket, as a guest that reboots or crashes would."""
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            with _suppress():
                transport.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self._accepter.join(5)
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            transport.close()
            transport.packetizer.complete_handshake()  # cancels the timer a failed negotiation leaves
        for thread in self._threads:
            thread.join(5)

    # ------------------------------------------------------------------------------ the interpreter

    def _interpret(self, chan: paramiko.Channel, line: str, user: str | None) -> None:
        status: int | None = 0
        transport = chan.get_transport()
        assert isinstance(transport, _ServerTransport)
        transport.replied(chan.remote_chanid).wait(5)
        try:
            for part in line.split(";"):
                argv = shlex.split(part)
                if not argv:
                    continue
                result = self._one(chan, argv, user)
                if result == "exit":
                    status = int(argv[1])
                    break
                if result == "nostatus":
                    status = None
                    break
                if result == "dropped":
                    return
            if status is not None:
                chan.send_exit_status(status)
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            return  # the client went away: nothing to report to
        finally:
            with _suppress():
                chan.close()

    def _one(self, chan: paramiko.Channel, argv: list[str], user: str | None) -> str | None:
        cmd, args = argv[0], argv[1:]
        if cmd == "echo":
            chan.sendall((" ".join(args) + "\n").encode())
        elif cmd == "err":
            chan.sendall_stderr((" ".join(args) + "\n").encode())
        elif cmd == "exit":
            return "exit"
        elif cmd == "sleep":
            self._stop.wait(float(args[0]))
        elif cmd == "hang":
            self._stop.wait()
        elif cmd == "flood":
            block = (b"x" * 99 + b"\n") * 10486  # ~1 MiB of 100-byte lines
            for _ in range(int(args[0])):
                chan.sendall(block)
        elif cmd == "longline":
            remaining = int(args[0])
            while remaining:
                n = min(remaining, 65536)
                chan.sendall(b"y" * n)
                remaining -= n
        elif cmd == "invalid-utf8":
            chan.sendall(b"bad \xff\xfe bytes\n")
            # A valid multi-byte character split across two packets must survive intact.
            chan.sendall(b"caf\xc3")
            time.sleep(0.05)
            chan.sendall(b"\xa9\n")
        elif cmd == "cat":
            while data := chan.recv(65536):
                chan.sendall(data)
        elif cmd == "count-stdin":
            total = 0
            while data := chan.recv(65536):
                total += len(data)
            chan.sendall(f"{total}\n".encode())
        elif cmd == "interleave":
            for i in range(int(args[0])):
                chan.sendall(f"o{i}\n".encode())
                chan.sendall_stderr(f"e{i}\n".encode())
                time.sleep(0.002)
        elif cmd == "drop":
            chan.sendall(b"about to drop\n")
            time.sleep(0.1)
            transport = chan.get_transport()
            assert transport is not None and transport.sock is not None
            transport.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            return "dropped"
        elif cmd == "nostatus":
            return "nostatus"
        elif cmd == "whoami":
            chan.sendall(f"{user}\n".encode())
        else:
            chan.sendall_stderr(f"sshserver: unknown command {cmd!r}\n".encode())
            chan.send_exit_status(127)
            return "nostatus"
        return None


class _RootedHandle(paramiko.SFTPHandle):
    def __init__(self, path: str, flags: int, fd: int) -> None:
        super().__init__(flags)
        self.path = path
        mode = "rb" if (flags & (os.O_WRONLY | os.O_RDWR)) == 0 else ("r+b" if flags & os.O_RDWR else "wb")
        if flags & os.O_APPEND:
            mode = "ab"
        f = os.fdopen(fd, mode)
        self.readfile = f
        self.writefile = f

    def stat(self) -> paramiko.SFTPAttributes | int:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        return _apply_attrs(self.path, attr)


class _RootedSFTP(paramiko.SFTPServerInterface):
    """SFTP over a host directory; remote absolute paths are mapped below ``root``."""

    def __init__(self, server: paramiko.ServerInterface, root: Path) -> None:
        super().__init__(server)
        self.root = root

    def _local(self, path: str) -> str:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PermissionError(errno.EACCES, "no '..' in test paths")
        return str(self.root.joinpath(*parts))

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle | int:
        try:
            local = self._local(path)
            perms = attr.st_mode if attr.st_mode is not None else 0o666
            fd = os.open(local, flags, perms & 0o7777)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        return _RootedHandle(local, flags, fd)

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._local(path)))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    lstat = stat

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return _apply_attrs(self._local(path), attr)

    def remove(self, path: str) -> int:
        try:
            os.remove(self._local(path))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        return paramiko.SFTP_OK


def _apply_attrs(local: str, attr: paramiko.SFTPAttributes) -> int:
    try:
        if attr.st_mode is not None:
            os.chmod(local, attr.st_mode & 0o7777)
        if attr.st_size is not None:
            os.truncate(local, attr.st_size)
    except OSError as exc:
        return paramiko.SFTPServer.convert_errno(exc.errno)
    return paramiko.SFTP_OK


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


class TCPProxy:
    """127.0.0.1 port forwarder in front of ``target_port``, with the failure modes of slirp and a frozen
    guest: ``silent`` accepts and says nothing, then closes after ``silent_close`` seconds; ``forward``
    relays; ``freeze()`` stops relaying on every connection without closing it."""

    def __init__(self, target_port: int, *, silent: bool = False, silent_close: float = 0.5) -> None:
        self.target_port = target_port
        self.silent = silent
        self.silent_close = silent_close
        self.silent_connections = 0
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._start(self._accept_loop)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._socks.append(client)
            if self.silent:
                self.silent_connections += 1
                self._start(self._hold_silent, client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            self._socks.append(upstream)
            self._start(self._relay, client, upstream)

    def _hold_silent(self, client: socket.socket) -> None:
        self._stop.wait(self.silent_close)
        client.close()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                if self.frozen.is_set():
                    self._stop.wait(0.05)  # neither read nor close: the peer just stops answering
                    continue
                readable, _, _ = select.select([a, b], [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def freeze(self) -> None:
        self.frozen.set()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)
        for sock in self._socks:
            sock.close()


class RawServer:
    """Accepts TCP connections on 127.0.0.1, sends ``greeting`` and then nothing, closing each connection
    after ``hold`` seconds: an SSH server stuck after its banner, or a different service on the port."""

    def __init__(self, greeting: bytes, hold: float = 3.0) -> None:
        self.greeting = greeting
        self.hold = hold
        self.connections = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepter.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            with _suppress():
                client.sendall(self.greeting)
            self._stop.wait(self.hold)

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)
