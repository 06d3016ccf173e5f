"""A loopback stand-in for a broker that requires SASL (optionally over TLS).

It answers ApiVersions and the SASL handshake, records the login each client sends, then
refuses it (``SaslAuthenticationFailed``), so every Kafka client can be started against
it without a real broker and fails fast, after the security settings went on the wire.
A self-signed certificate (made with the ``openssl`` command) serves the TLS variant;
given a client CA it requires and records a client certificate (mutual TLS).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.protocol.admin import (
    ApiVersionResponse_v0,
    ApiVersionResponse_v1,
    SaslAuthenticateResponse_v0,
    SaslAuthenticateResponse_v1,
    SaslHandShakeResponse_v1,
)

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
SASL_AUTHENTICATION_FAILED = 58
VERSIONS = [(API_VERSIONS, 0, 2), (SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 1)]


@dataclass
class Login:
    """What one connection sent: the mechanism, and the first SASL message."""

    mechanism: str | None = None
    auth: bytes | None = None
    requests: list[int] = field(default_factory=list)  # API keys, in order
    client_cn: str | None = None  # the verified client certificate's common name (mTLS)

    @property
    def username(self) -> str | None:
        if self.auth is None:
            return None
        if self.mechanism == "PLAIN":  # authzid NUL user NUL password
            return self.auth.split(b"\0")[1].decode()
        # SCRAM client-first: n,,n=<user>,r=<nonce>
        return dict(p.split("=", 1) for p in self.auth.decode().split(",")[2:])["n"]

    @property
    def password(self) -> str | None:
        if self.mechanism == "PLAIN" and self.auth is not None:
            return self.auth.split(b"\0")[2].decode()
        return None  # SCRAM never sends it


def self_signed(folder: Path) -> Path | None:
    """A certificate and key for 127.0.0.1 in ``folder`` (``cert.pem``, ``key.pem``);
    None without the ``openssl`` command."""
    if shutil.which("openssl") is None:
        return None
    cert = folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=driftwarden-test", "-keyout",
         str(folder / "key.pem"), "-out", str(cert),
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30)
    return cert


def client_certificate(folder: Path, passphrase: str | None = None) -> tuple[Path, Path] | None:
    """A self-signed client certificate (CN ``driftwarden-client``) and its key, the key
    encrypted with ``passphrase`` when given; None without the ``openssl`` command."""
    if shutil.which("openssl") is None:
        return None
    cert, plain, key = (folder / "client.pem", folder / "client-plain-key.pem",
                        folder / "client-key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=driftwarden-client", "-keyout", str(plain),
         "-out", str(cert), "-addext", "extendedKeyUsage=clientAuth"],
        check=True, capture_output=True, timeout=30)
    if passphrase is None:
        plain.rename(key)
    else:
        subprocess.run(["openssl", "pkey", "-in", str(plain), "-aes256", "-passout",
                        "env:DW_FAKE_PASSPHRASE", "-out", str(key)],
                       check=True, capture_output=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "DW_FAKE_PASSPHRASE": passphrase})
        plain.unlink()
    return cert, key


class FakeSaslBroker:
    """Serve on a free loopback port until :meth:`stop`; ``logins`` holds one
    :class:`Login` per connection."""

    def __init__(self, cert: Path | None = None, client_ca: Path | None = None) -> None:
        self.tls: ssl.SSLContext | None = None
        if cert is not None:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(cert, cert.with_name("key.pem"))
            if client_ca is not None:
                self.tls.verify_mode = ssl.CERT_REQUIRED
                self.tls.load_verify_locations(client_ca)
        self.logins: list[Login] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FakeSaslBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        login = Login()
        peer = writer.get_extra_info("peercert") or {}
        for rdn in peer.get("subject", ()):
            for name, value in rdn:
                if name == "commonName":
                    login.client_cn = value
        self.logins.append(login)
        self._writers.add(writer)
        try:
            while True:
                (size,) = struct.unpack(">i", await reader.readexactly(4))
                data = await reader.readexactly(size)
                key, version, correlation, client_len = struct.unpack(">hhih", data[:10])
                body = data[10 + max(client_len, 0):]
                login.requests.append(key)
                if key == API_VERSIONS:
                    resp = (ApiVersionResponse_v0(0, VERSIONS) if version == 0
                            else ApiVersionResponse_v1(0, VERSIONS, 0))
                elif key == SASL_HANDSHAKE:
                    (n,) = struct.unpack(">h", body[:2])
                    login.mechanism = body[2:2 + n].decode()
                    resp = SaslHandShakeResponse_v1(0, ["PLAIN", "SCRAM-SHA-256",
                                                        "SCRAM-SHA-512"])
                elif key == SASL_AUTHENTICATE:
                    (n,) = struct.unpack(">i", body[:4])
                    login.auth = body[4:4 + n]
                    message = "Authentication failed: invalid credentials"
                    resp = (SaslAuthenticateResponse_v0(SASL_AUTHENTICATION_FAILED, message, b"")
                            if version == 0 else
                            SaslAuthenticateResponse_v1(SASL_AUTHENTICATION_FAILED, message,
                                                        b"", 0))
                else:  # nothing else is served: the client gives up
                    break
                out = struct.pack(">i", correlation) + resp.encode()
                writer.write(struct.pack(">i", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
