"""The node's front door: connections are accepted, TLS-handshaken and read up to their A-ASSOCIATE-RQ here, off
pynetdicom's hands and within a deadline, so that a connection that never completes costs a file descriptor for
``handshake_s`` seconds and nothing else.

Left to itself, pynetdicom's server does the TLS handshake inside its accept loop on a socket with no timeout (one
connection that never sends a ClientHello stalls every other TLS sender, and stopping the server waits for it),
and turns each raw connection into an association thread that counts against ``max_associations`` before it has
sent anything (a handful of idle connections locks the allowed senders out). Here one thread runs a selector over
the listening socket and every connection still being handshaken, all non-blocking:

    accept -> TLS handshake (with TLS) -> A-ASSOCIATE-RQ: the whole PDU (or its first 64 KiB) -> calling AE title
    and address allowed? -> handed to pynetdicom, which negotiates the association in its own thread

A connection is dropped when ``handshake_s`` passes before that, when its first PDU is not an A-ASSOCIATE-RQ (or
claims more than 1 MiB), or when :data:`MAX_PENDING` newer ones are waiting (the oldest goes first, so a flood
cannot keep a real sender out: a sender's request arrives within milliseconds of its connection). A calling AE title
or address not allowed is answered with A-ASSOCIATE-RJ here and never becomes an association. A sender that does
complete gets a socket with ``timeout_s`` on every read and write, so a half-sent PDU later cannot hold an
association thread either.

The request is read without being taken from pynetdicom: on a plain socket with ``MSG_PEEK`` (``SO_RCVLOWAT`` makes
the selector wait for the whole request instead of spinning on the part that came); under TLS the decrypted bytes
are kept and served again first by the socket handed on (:class:`_Replaying`, the documented
``SSLContext.sslsocket_class`` hook).
"""

from __future__ import annotations

import collections
import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from dexrt.pipelines.serve.logs import event

MAX_PENDING = 256  # connections being handshaken at once; beyond, the oldest is dropped
MAX_REQUEST = 1 << 20  # an A-ASSOCIATE-RQ is a few hundred bytes to a few tens of KiB
_READ_AHEAD = 64 << 10  # read (or peek) at most this much of the request before handing it on
_FIXED = 74  # PDU header (6) + protocol version, reserved, called AE, calling AE (36) + reserved (32)
_A_ASSOCIATE_RQ = 0x01
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # A-ASSOCIATE-RJ: rejected-permanent, service user, calling AE unknown


class _Replaying(ssl.SSLSocket):
    """A server-side TLS socket whose first application bytes (the A-ASSOCIATE-RQ the gate read) are served again
    first; ``pending()`` counts them, so pynetdicom's readiness check sees them."""

    replay = b""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if self.replay and not flags:
            out, self.replay = self.replay[:buflen], self.replay[buflen:]
            return out
        return super().recv(buflen, flags)

    def pending(self) -> int:
        return len(self.replay) + super().pending()


class _Connection:
    __slots__ = ("address", "data", "deadline", "sock", "tls_done")

    def __init__(self, sock: socket.socket, address: Any, deadline: float, tls: bool) -> None:
        self.sock, self.address, self.deadline = sock, address, deadline
        self.tls_done = not tls
        self.data = b""  # the request so far (peeked, or read from TLS)


class Gate:
    """Listens on (host, port) and hands completed association requests to `hand_on(sock, address)`.

    `admits(calling_ae, address)` says whether a calling AE title may associate from that address (the caller logs
    a refusal); `count(name)` counts dropped and rejected connections."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None, handshake_s: float, timeout_s: float,
                 admits: Callable[[str, str], bool], hand_on: Callable[[socket.socket, Any], None],
                 count: Callable[[str], None]) -> None:
        self._tls = tls
        if tls is not None:
            tls.sslsocket_class = _Replaying
        self._handshake_s, self._timeout_s = handshake_s, timeout_s
        self._admits, self._hand_on, self._count = admits, hand_on, count
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=128)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._pending: collections.OrderedDict[socket.socket, _Connection] = collections.OrderedDict()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dexrt-serve-gate", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting and drop every connection not yet handed on; returns within `timeout`."""
        self._closing.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    # -- the selector loop --------------------------------------------------------------------------------------
    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ, "accept")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            try:
                while not self._closing.is_set():
                    now = time.monotonic()
                    first = next(iter(self._pending.values()), None)  # the oldest has the nearest deadline
                    wait = 1.0 if first is None else min(max(first.deadline - now, 0.0), 1.0)
                    for key, _ in selector.select(wait):
                        if key.data == "accept":
                            self._accept(selector)
                        elif isinstance(key.data, _Connection) and key.data.sock in self._pending:
                            self._step(selector, key.data)
                    self._expire(selector)
            except Exception:  # a bug here must not leave the port open and dead: log it, close everything
                logging.getLogger(__name__).exception("the connection gate failed")
            finally:
                for conn in list(self._pending.values()):
                    self._drop(selector, conn, None)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        for _ in range(64):  # then let the others have a turn
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, ...: keep serving those already here
                event("accept_failed", logging.WARNING, reason=exc.strerror or str(exc))
                return
            sock.setblocking(False)
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                except (OSError, ValueError):
                    sock.close()
                    continue
            conn = _Connection(sock, address, time.monotonic() + self._handshake_s, self._tls is not None)
            self._pending[sock] = conn
            selector.register(sock, selectors.EVENT_READ, conn)
            if len(self._pending) > MAX_PENDING:
                self._drop(selector, next(iter(self._pending.values())),
                           f"more than {MAX_PENDING} connections waiting to complete their association request")

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                return
            self._drop(selector, oldest, f"no {'TLS handshake and ' if not oldest.tls_done else ''}"
                                         f"A-ASSOCIATE-RQ within handshake_s ({self._handshake_s:g} s)")

    def _drop(self, selector: selectors.BaseSelector, conn: _Connection, reason: str | None) -> None:
        self._pending.pop(conn.sock, None)
        try:
            selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        if reason is not None:  # counted before the sender can see the close
            self._count("connections_dropped")
            event("connection_dropped", logging.WARNING, address=_host(conn.address), reason=reason)
        conn.sock.close()

    # -- one connection's progress ------------------------------------------------------------------------------
    def _step(self, selector: selectors.BaseSelector, conn: _Connection) -> None:
        sock = conn.sock
        try:
            if isinstance(sock, ssl.SSLSocket):
                if not conn.tls_done:
                    sock.do_handshake()
                    conn.tls_done = True
                    selector.modify(sock, selectors.EVENT_READ, conn)
                chunk = sock.recv(_READ_AHEAD - len(conn.data))
                if not chunk:
                    self._drop(selector, conn, "closed by the sender during the association request")
                    return
                conn.data += chunk
            else:
                before, conn.data = len(conn.data), sock.recv(_READ_AHEAD, socket.MSG_PEEK)
                if not conn.data:  # connected and closed at once: a port check, nothing to log
                    self._drop(selector, conn, None)
                    return
                if len(conn.data) == before:  # readable, nothing new: the sender closed (or reset) mid-request
                    self._drop(selector, conn, "closed by the sender during the association request")
                    return
        except ssl.SSLWantReadError:
            selector.modify(sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            selector.modify(sock, selectors.EVENT_WRITE, conn)
            return
        except ssl.SSLError as exc:
            self._drop(selector, conn, f"TLS handshake failed ({exc.reason or exc})")
            return
        except OSError as exc:
            self._drop(selector, conn, f"connection failed ({exc.strerror or exc})")
            return
        self._read_request(selector, conn)

    def _read_request(self, selector: selectors.BaseSelector, conn: _Connection) -> None:
        data = conn.data
        if len(data) < 6:
            self._await(conn, 6)
            return
        pdu_type, length = data[0], struct.unpack(">I", data[2:6])[0]
        if pdu_type != _A_ASSOCIATE_RQ:
            self._drop(selector, conn, f"first PDU of type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ (not a DICOM "
                                       "sender, or plaintext to a TLS port)")
            return
        if not _FIXED - 6 <= length <= MAX_REQUEST:
            self._drop(selector, conn, f"an A-ASSOCIATE-RQ of {length} bytes")
            return
        need = min(6 + length, _READ_AHEAD)
        if len(data) < need:
            self._await(conn, need)
            return
        calling = data[26:42].decode("ascii", "replace").strip()
        address = _host(conn.address)
        self._pending.pop(conn.sock, None)
        selector.unregister(conn.sock)
        if not self._admits(calling, address):
            self._reject(conn)
            return
        sock = conn.sock
        try:
            if isinstance(sock, _Replaying):
                sock.replay = data
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            sock.setblocking(True)
            sock.settimeout(self._timeout_s)  # every later read and write: a half-sent PDU cannot hold a thread
            self._hand_on(sock, conn.address)
        except Exception as exc:  # one connection must not end the gate
            logging.getLogger(__name__).debug("handing on a connection failed", exc_info=True)
            sock.close()
            self._count("connections_dropped")
            event("connection_dropped", logging.WARNING, address=address, reason=f"{type(exc).__name__}: {exc}")

    def _await(self, conn: _Connection, need: int) -> None:
        """Wait for `need` bytes of the request. A plain socket's peeked bytes stay in the kernel, so the selector
        would report it readable at once, again and again: SO_RCVLOWAT makes it wait until `need` have arrived."""
        if not isinstance(conn.sock, ssl.SSLSocket):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, need)

    def _reject(self, conn: _Connection) -> None:
        """A-ASSOCIATE-RJ (calling AE title not recognised), sent here: the request never reaches pynetdicom."""
        from pynetdicom.pdu import A_ASSOCIATE_RJ

        pdu = A_ASSOCIATE_RJ()
        pdu.result, pdu.source, pdu.reason_diagnostic = REJECT_CALLING_AE
        sock = conn.sock
        try:
            if not isinstance(sock, ssl.SSLSocket):
                sock.recv(len(conn.data))  # take what was peeked: closing on unread data would send a reset
            sock.setblocking(True)
            sock.settimeout(1.0)
            sock.sendall(pdu.encode())
            if not isinstance(sock, ssl.SSLSocket):
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sock.close()


def association_server(ae: Any, address: tuple[str, int], handlers: list[Any]) -> Any:
    """pynetdicom's association server, without a listening socket of its own: the gate hands it connections with
    ``process_request(sock, address)`` (socketserver's hook), and each is negotiated and served in its own thread
    exactly as pynetdicom's accept loop would have. `address` is the gate's, for the associations' records."""
    from pynetdicom.transport import ThreadedAssociationServer

    class GateFed(ThreadedAssociationServer):
        def server_bind(self) -> None:  # the gate listens; this server only runs associations
            if self.socket is not None:
                self.socket.close()

        def server_activate(self) -> None:
            pass

        def shutdown(self) -> None:  # never served_forever: socketserver's shutdown() would wait for it forever
            self.server_close()

    return ae.make_server(address, evt_handlers=handlers, server_class=GateFed)


def _host(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)
