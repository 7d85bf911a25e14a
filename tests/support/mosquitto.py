"""A real Mosquitto broker in a folder, for tests and benchmarks (Debian's ``mosquitto`` 2.0).

* ``docs_broker_config`` takes the broker configuration recommended in ``docs/venue.md`` (the
  fenced blocks after the ``<!-- mosquitto-conf -->`` and ``<!-- mosquitto-acl -->`` markers)
  and moves its files, ports and persistence into a folder, so the tests run exactly what the
  docs tell people to run.
* ``make_tls`` writes a CA, a server certificate for 127.0.0.1/localhost and client
  certificates (CN = user name), with the ``cryptography`` package.
* ``add_passwords`` writes a Mosquitto password file with ``mosquitto_passwd -b``.
* ``MosquittoBroker`` starts ``mosquitto -c FILE`` on 127.0.0.1, waits until it listens, and
  stops it by PID (SIGTERM, which makes it save its persistence file); ``start`` again
  reuses the same ports, folder and persistence.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DOCS_DIR = "/etc/mosquitto/hallway/"
"""The folder the docs' configuration names for its files."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fenced_block_after(markdown: str, marker: str) -> str:
    """The body of the first fenced code block after ``marker`` in a Markdown text."""
    start = markdown.index(marker)
    match = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S).search(markdown, start)
    if match is None:
        raise ValueError(f"no fenced block after {marker}")
    return match.group(1)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the CA, the server's certificate and key, and client (cert, key) pairs."""

    ca: Path
    server_cert: Path
    server_key: Path
    clients: Mapping[str, tuple[Path, Path]] = field(default_factory=dict)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls(directory: Path, *, clients: Iterable[str] = ()) -> TlsFiles:
    """Write a throw-away CA, a server certificate and client certificates into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("hallway test CA", ca_key, issuer=None, issuer_key=ca_key, ca=True)

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
              ) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        key_path.chmod(0o600)
        return cert_path, key_path

    ca_path, _ = write("ca", ca_cert, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue("127.0.0.1", server_key, issuer=ca_cert.subject, issuer_key=ca_key,
                         server=True)
    server_cert_path, server_key_path = write("server", server_cert, server_key)
    client_files = {}
    for name in clients:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name, key, issuer=ca_cert.subject, issuer_key=ca_key)
        client_files[name] = write(f"client-{name}", cert, key)
    return TlsFiles(ca_path, server_cert_path, server_key_path, client_files)


def add_passwords(path: Path, users: Mapping[str, str]) -> None:
    """Create or extend a Mosquitto password file (hashed by ``mosquitto_passwd``)."""
    path.touch(exist_ok=True)
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True,
                       capture_output=True, timeout=30)


def docs_broker_config(
    docs_markdown: str,
    directory: Path,
    *,
    port: int,
    tls_port: int,
    tls: TlsFiles,
) -> str:
    """The docs' recommended ``mosquitto.conf`` and ACL, moved into ``directory``.

    Writes the ACL to ``directory/acl`` and returns the config text; the password file is
    expected at ``directory/passwd``. Only file locations, ports and persistence change.
    """
    conf = fenced_block_after(docs_markdown, "<!-- mosquitto-conf -->")
    acl = fenced_block_after(docs_markdown, "<!-- mosquitto-acl -->")
    (directory / "acl").write_text(acl)
    (directory / "passwd").touch(exist_ok=True)
    conf = conf.replace(DOCS_DIR + "ca.pem", str(tls.ca))
    conf = conf.replace(DOCS_DIR + "server.pem", str(tls.server_cert))
    conf = conf.replace(DOCS_DIR + "server.key", str(tls.server_key))
    conf = conf.replace(DOCS_DIR, f"{directory}/")
    conf, plain = re.subn(r"^listener 1883 127\.0\.0\.1$", f"listener {port} 127.0.0.1",
                          conf, flags=re.M)
    conf, secure = re.subn(r"^listener 8883$", f"listener {tls_port} 127.0.0.1", conf,
                           flags=re.M)
    if plain != 1 or secure != 1:
        raise ValueError("the docs' broker config no longer has the expected listeners")
    # Test-only: Debian's main config (not used here) sets persistence; run as the caller.
    header = (
        f"persistence true\npersistence_location {directory}/\nuser {_user()}\n"
        f"log_dest file {directory}/mosquitto.log\nlog_type all\n"
    )
    return header + conf


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


class MosquittoBroker:
    """``mosquitto -c <directory>/mosquitto.conf``, started and stopped by PID."""

    def __init__(self, directory: Path, config: str, *, ports: Iterable[int]) -> None:
        self.directory = directory
        self.config_path = directory / "mosquitto.conf"
        self.config_path.write_text(config)
        self.ports = tuple(ports)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self, *, timeout_s: float = 10.0) -> None:
        """Start the broker and wait until every listener accepts connections."""
        if self.running:
            return
        self._process = subprocess.Popen(
            ["mosquitto", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        waiting = list(self.ports)
        while waiting:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if (
                    self._process.stderr) else ""
                raise RuntimeError(f"mosquitto exited ({self._process.returncode}): {err}"
                                   f"{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.5):
                    waiting.pop(0)
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on {waiting[0]}") from None
                time.sleep(0.05)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM (the broker saves its persistence file), then wait; SIGKILL if it hangs."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)
        if process.stderr is not None:
            process.stderr.close()
        self._process = None

    def kill(self) -> None:
        """SIGKILL: a crash, without saving anything."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the broker's log file, for failure messages."""
        path = self.directory / "mosquitto.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
