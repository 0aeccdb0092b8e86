"""A TCP proxy for PostgreSQL that cuts connections at chosen moments, for fault tests.

It sits on 127.0.0.1 between the workers and the server and reads the client's side of
the wire protocol (simple and extended queries, prepared statements), so it knows which
SQL statement each message runs. A `Cut` names a moment:

- ``before``: the connection is closed instead of forwarding a statement that matches,
  so the server rolls back the transaction ("mid-claim", "mid-heartbeat", "mid-tell");
- ``after_commit``: the COMMIT of a transaction that ran a matching statement is
  forwarded, the server commits, and the connection is closed instead of passing the
  reply back ("after the server commits but before the reply").

Every ``every``-th matching moment is cut, at most ``limit`` times. The client sees what
a dropped network or a restarted server gives it: a closed connection.

Example:
    >>> with PgProxy([Cut("claim", "before", CLAIM_SQL)]) as proxy:  # doctest: +SKIP
    ...     url = proxy.url("postgresql+psycopg://postgres@127.0.0.1:5432/db")
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass

from sqlalchemy.engine import make_url

# The statements of the moments that matter, as SQLAlchemy writes them for Optuna's tables.
CLAIM_SQL = re.compile(r"^UPDATE trials SET state=.*datetime_start", re.S)
TELL_SQL = re.compile(r"^UPDATE trials SET state=.*datetime_complete", re.S)
VALUE_SQL = re.compile(r"^INSERT INTO trial_values", re.S)
HEARTBEAT_SQL = re.compile(r"^(INSERT INTO|UPDATE) trial_heartbeats", re.S)

_SSL_REQUEST, _GSS_REQUEST = 80877103, 80877104


@dataclass
class Cut:
    """Cut the connection at the `every`-th statement matching `sql` (at most `limit`)."""

    name: str
    when: str  # "before" the statement, or "after_commit" of its transaction
    sql: re.Pattern
    every: int = 3
    limit: int = 6


class _Link:
    """One client connection and its server connection, with the client's statements."""

    def __init__(self, proxy: PgProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.statements: dict[bytes, str] = {}  # prepared statement name -> SQL
        self.in_transaction: list[str] = []  # SQL since the last COMMIT or ROLLBACK
        self.drop_reply = threading.Event()  # set: close instead of passing the next reply
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for s in (self.client, self.server):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    # ------------------------------------------------------------ client -> server

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.client.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
        return data

    def upstream(self) -> None:
        try:
            self._startup()
            while True:
                kind = self._read(1)
                (length,) = struct.unpack("!I", self._read(4))
                body = self._read(length - 4)
                sql = self._statement(kind, body)
                if sql is not None and not self.proxy.allow(self, sql):
                    return self.close()  # cut before the server sees it
                self.server.sendall(kind + struct.pack("!I", length) + body)
        except (ConnectionError, OSError):
            self.close()

    def _startup(self) -> None:
        # The first messages have no type byte; an SSL or GSS request is answered with
        # one byte ("N": use a URL with sslmode=disable) before the real startup message.
        while True:
            (length,) = struct.unpack("!I", self._read(4))
            body = self._read(length - 4)
            self.server.sendall(struct.pack("!I", length) + body)
            if struct.unpack("!I", body[:4])[0] not in (_SSL_REQUEST, _GSS_REQUEST):
                return

    def _statement(self, kind: bytes, body: bytes) -> str | None:
        """The SQL a message runs: a simple query, or the statement a Bind executes."""
        if kind == b"Q":
            return body.rstrip(b"\0").decode(errors="replace")
        if kind == b"P":
            name, rest = body.split(b"\0", 1)
            self.statements[name] = rest.split(b"\0", 1)[0].decode(errors="replace")
        elif kind == b"B":
            _portal, statement, _ = body.split(b"\0", 2)
            return self.statements.get(statement, "")
        return None

    # ------------------------------------------------------------ server -> client

    def downstream(self) -> None:
        try:
            while not self.closed.is_set():
                data = self.server.recv(65536)
                if not data or self.drop_reply.is_set():
                    break  # the server committed; its reply is lost with the connection
                self.client.sendall(data)
        except OSError:
            pass
        self.close()


class PgProxy:
    """Forwards 127.0.0.1:`port` to the server at `upstream`, cutting as `cuts` say."""

    def __init__(self, cuts: list[Cut], upstream: tuple[str, int] = ("127.0.0.1", 5432)):
        self.cuts = cuts
        self.upstream = upstream
        self.seen: Counter[str] = Counter()  # matching moments per cut name
        self.done: Counter[str] = Counter()  # cuts made per cut name
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._links: list[_Link] = []
        self._stopped = threading.Event()

    def url(self, url: str) -> str:
        """`url` pointed at this proxy, without TLS (the proxy reads plain messages)."""
        proxied = make_url(url).set(host="127.0.0.1", port=self.port)
        proxied = proxied.update_query_dict({"sslmode": "disable", "gssencmode": "disable"})
        return proxied.render_as_string(hide_password=False)

    def allow(self, link: _Link, sql: str) -> bool:
        """Whether `sql` may reach the server; arms a lost reply for a cut COMMIT."""
        text = sql.strip()
        if text.upper() in ("COMMIT", "ROLLBACK"):
            ran, link.in_transaction = link.in_transaction, []
            if text.upper() == "COMMIT":
                for cut in self.cuts:
                    if cut.when == "after_commit" and any(cut.sql.search(s) for s in ran):
                        if self._due(cut):
                            link.drop_reply.set()
            return True
        link.in_transaction.append(text)
        for cut in self.cuts:
            if cut.when == "before" and cut.sql.search(text) and self._due(cut):
                return False
        return True

    def _due(self, cut: Cut) -> bool:
        with self._lock:
            self.seen[cut.name] += 1
            due = self.seen[cut.name] % cut.every == 0 and self.done[cut.name] < cut.limit
            if due:
                self.done[cut.name] += 1
            return due

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                # Messages pass one by one; Nagle's algorithm would hold each small one
                # back for the previous one's acknowledgement, tens of ms per query.
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, server)
            self._links.append(link)
            for target in (link.upstream, link.downstream):
                threading.Thread(target=target, daemon=True).start()

    def __enter__(self) -> PgProxy:
        threading.Thread(target=self._serve, name="pgproxy", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._listener.close()
        for link in self._links:
            link.close()
