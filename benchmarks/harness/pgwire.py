"""A minimal PostgreSQL wire-protocol client (stdlib asyncio) for holding thousands of idle sessions.

It only speaks what the idle-client memory test needs: StartupMessage, trust or cleartext login,
one simple query, Terminate. libpq would need a thread or a process per connection for this.
"""
import asyncio
import resource
import ssl
import struct


class LoginError(Exception):
    pass


def _startup(user, database):
    body = struct.pack("!I", 196608)
    for k, v in (("user", user), ("database", database), ("application_name", "cutover-bench-idle")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


async def _read_message(reader):
    header = await reader.readexactly(5)
    kind, length = header[:1], struct.unpack("!I", header[1:])[0]
    return kind, await reader.readexactly(length - 4)


async def _until_ready(reader, writer, password):
    while True:
        kind, body = await _read_message(reader)
        if kind == b"R":
            code = struct.unpack("!I", body[:4])[0]
            if code == 3 and password is not None:          # cleartext
                pw = password.encode() + b"\0"
                writer.write(b"p" + struct.pack("!I", len(pw) + 4) + pw)
            elif code != 0:
                raise LoginError(f"authentication method {code} is not supported by the idle client (use trust)")
        elif kind == b"E":
            raise LoginError(body.replace(b"\0", b" ").decode(errors="replace").strip())
        elif kind == b"Z":
            return


class IdleSessions:
    """Opens sessions to 127.0.0.1:port and keeps them open and idle until `close()`."""

    def __init__(self, port, user, database, password=None, run_query=True, concurrency=32, tls=False):
        self.port, self.user, self.database, self.password = port, user, database, password
        # TLS as libpq's sslmode=require: SSLRequest, then a handshake that does not check the certificate.
        self.tls = None
        if tls:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.tls.check_hostname = False
            self.tls.verify_mode = ssl.CERT_NONE
        self.run_query = run_query
        self.concurrency = concurrency
        self.sessions = []
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def _open_one(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        if self.tls:
            writer.write(struct.pack("!II", 8, 80877103))
            if await reader.readexactly(1) != b"S":
                raise LoginError("the server refused TLS")
            await writer.start_tls(self.tls)
        writer.write(_startup(self.user, self.database))
        await _until_ready(reader, writer, self.password)
        if self.run_query:
            q = b"SELECT 1\0"
            writer.write(b"Q" + struct.pack("!I", len(q) + 4) + q)
            await _until_ready(reader, writer, self.password)
        self.sessions.append((reader, writer))

    async def grow_to(self, total):
        """Opens sessions until `total` are open, `concurrency` logins at a time."""
        pending = total - len(self.sessions)
        sem = asyncio.Semaphore(self.concurrency)

        async def one():
            async with sem:
                await self._open_one()
        await asyncio.gather(*(one() for _ in range(pending)))

    async def close(self):
        for _, writer in self.sessions:
            try:
                writer.write(b"X\0\0\0\4")
                writer.close()
            except Exception:
                pass
        for _, writer in self.sessions:
            try:
                await writer.wait_closed()
            except Exception:
                pass
        self.sessions.clear()
