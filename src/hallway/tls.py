"""TLS for the TCP socket: the server's certificate, its fingerprint, and the connection URI.

With ``server.tls = true`` and no ``tls_cert``/``tls_key`` configured, the daemon makes a
self-signed certificate (EC P-256, ten years) at first start in ``<state dir>/tls/`` with the
key file created mode 0600 (never readable by others, whatever the umask). Clients do not
trust it through a CA: they pin the SHA-256 of its DER encoding, given to them with the
token in the connection URI ``hallway://HOST:PORT?token=SECRET&fp=sha256:HEX``.

The server context speaks TLS 1.2 and 1.3 only, with Python's default (secure) ciphers, and
issues no session tickets.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hallway.config import ServerConfig
from hallway.errors import ConfigError, Problem

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
VALID_DAYS = 3650


def tls_dir(state_dir: Path) -> Path:
    """Where a generated certificate is kept."""
    return state_dir / "tls"


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with exactly ``mode`` (O_EXCL: never through an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed or (never) widened it
        os.write(fd, data)
    finally:
        os.close(fd)


def generate_certificate(directory: Path, *, hostnames: list[str]) -> tuple[Path, Path]:
    """Make a self-signed certificate and key in ``directory``; (cert path, key path)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0][:64])])
    alt: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / KEY_NAME, directory / CERT_NAME
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    temp_key = directory / f".{KEY_NAME}.{os.getpid()}.tmp"
    temp_cert = directory / f".{CERT_NAME}.{os.getpid()}.tmp"
    for temp in (temp_key, temp_cert):
        temp.unlink(missing_ok=True)
    _write_private(temp_key, key_pem, 0o600)
    _write_private(temp_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    os.rename(temp_key, key_path)  # the key first: a cert file is never there without it
    os.rename(temp_cert, cert_path)
    return cert_path, key_path


def certificate_paths(config: ServerConfig, state_dir: Path, *, create: bool
                      ) -> tuple[Path, Path]:
    """The configured certificate and key, or the generated pair (made now if ``create``)."""
    if config.tls_cert is not None and config.tls_key is not None:
        return Path(config.tls_cert), Path(config.tls_key)
    directory = tls_dir(state_dir)
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    if not cert.exists() and create:
        hosts = ["localhost", "127.0.0.1", "::1"]
        name = socket.gethostname()
        if name and name not in hosts:
            hosts.insert(0, name)
        if not is_wildcard(config.tcp_host) and config.tcp_host not in hosts:
            hosts.insert(0, config.tcp_host)
        cert, key = generate_certificate(directory, hostnames=hosts)
    return cert, key


def is_wildcard(host: str) -> bool:
    """True for an any-address bind (``0.0.0.0``, ``::``, empty)."""
    return host in ("", "0.0.0.0", "::", "[::]")


def server_context(config: ServerConfig, state_dir: Path) -> ssl.SSLContext | None:
    """The TCP socket's TLS context (TLS 1.2+), or None when ``server.tls`` is off."""
    if not config.tls:
        return None
    cert, key = certificate_paths(config, state_dir, create=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.3 session tickets: our clients open one long connection and never resume one
    # (asyncio offers no session reuse), and making two tickets per handshake costs the loop
    # about a quarter of a handshake's CPU. The key exchange stays X25519 (cheaper than P-256).
    context.num_tickets = 0
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        key_name = "server.tls_cert" if config.tls_cert else "server.tls"
        raise ConfigError([Problem(str(cert), key_name,
                                   f"cannot load the certificate and key: {exc}")]) from None
    return context


def fingerprint_of_pem(pem: bytes | str) -> str:
    """``sha256:HEX`` of a PEM certificate's DER encoding."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    return fingerprint_of_der(ssl.PEM_cert_to_DER_cert(text))


def fingerprint_of_der(der: bytes) -> str:
    """``sha256:HEX`` (lower-case hex, no colons) of a DER certificate."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def certificate_fingerprint(config: ServerConfig, state_dir: Path) -> tuple[Path, str]:
    """The certificate file the daemon serves (generated now if it would be) and its print."""
    cert, _ = certificate_paths(config, state_dir, create=True)
    try:
        pem = cert.read_text(encoding="ascii")
    except OSError as exc:
        raise ConfigError([Problem(str(cert), "server.tls_cert",
                                   f"cannot read: {exc.strerror or exc}")]) from None
    try:
        return cert, fingerprint_of_pem(pem)
    except ValueError as exc:
        raise ConfigError([Problem(str(cert), "server.tls_cert", f"not a PEM certificate: {exc}")
                           ]) from None


def connection_uri(host: str, port: int, *, token: str | None = None,
                   fingerprint: str | None = None) -> str:
    """``hallway://HOST:PORT?token=SECRET&fp=sha256:HEX`` (each part only when given)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    query = []
    if token is not None:
        query.append("token=" + quote(token, safe=""))
    if fingerprint is not None:
        query.append("fp=" + fingerprint)
    return f"hallway://{shown}:{port}" + ("?" + "&".join(query) if query else "")


def advertised_host(config: ServerConfig) -> str:
    """The host name a client on the network uses for this daemon."""
    if is_wildcard(config.tcp_host):
        return socket.gethostname() or "localhost"
    return config.tcp_host
