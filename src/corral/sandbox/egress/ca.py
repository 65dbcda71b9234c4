"""The per-sandbox certificate authority that lets the egress proxy terminate TLS for the hosts a sandbox reaches."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
import ssl
import stat
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.sandbox.egress.policy import is_ip_literal

CA_CERT_NAME = "egress-ca.pem"
CA_KEY_NAME = "egress-ca-key.pem"
_CA_VALIDITY = datetime.timedelta(days=365)  # a run may wait days for an approval and resume with the same CA
_LEAF_VALIDITY = datetime.timedelta(days=30)
_CLOCK_SKEW = datetime.timedelta(hours=1)
_MAX_CACHED_CONTEXTS = 256


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file that only the owner can read (never through an existing file or symlink)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


class SandboxCA:
    """An EC P-256 CA made for one sandbox; its key stays in ``state_dir`` (mode 0600) and in this process.

    ``load_or_create`` reuses a CA left in ``state_dir`` by an earlier proxy for the same sandbox (a
    host restart), so a sandbox that already trusts ``cert_path`` keeps working.
    """

    def __init__(self, state_dir: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.state_dir = state_dir
        self.cert = cert
        self._key = key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())  # one key for every leaf of this proxy
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()

    @property
    def cert_path(self) -> Path:
        return self.state_dir / CA_CERT_NAME

    @property
    def key_path(self) -> Path:
        return self.state_dir / CA_KEY_NAME

    @classmethod
    def load_or_create(cls, state_dir: Path) -> SandboxCA:
        loaded = cls._load(state_dir)
        if loaded is not None:
            return loaded
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "corral"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"corral sandbox egress CA {secrets.token_hex(4)}"),
            ]
        )
        now = datetime.datetime.now(datetime.UTC)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        ca = cls(state_dir, cert, key)
        _write_private(ca.key_path, key_pem)
        ca.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        ca.cert_path.chmod(0o644)
        return ca

    @classmethod
    def _load(cls, state_dir: Path) -> SandboxCA | None:
        """The CA an earlier proxy left, if its key is private to us and its certificate still valid."""
        cert_path, key_path = state_dir / CA_CERT_NAME, state_dir / CA_KEY_NAME
        try:
            info = key_path.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 or info.st_uid != os.getuid():
                return None
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError, TypeError):
            return None
        remaining = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
            return None
        if remaining < _LEAF_VALIDITY:
            return None
        return cls(state_dir, cert, key)

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for ``host`` signed by this CA (cached per host)."""
        context = self._contexts.get(host)
        if context is not None:
            self._contexts.move_to_end(host)
            return context
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        # The stdlib loads a certificate chain only from a file: write one the owner alone can read, load
        # it, remove it at once.
        chain = self.state_dir / f"egress-leaf-{secrets.token_hex(8)}.pem"
        _write_private(chain, self._leaf_pem(host))
        try:
            context.load_cert_chain(chain)
        finally:
            chain.unlink()
        self._contexts[host] = context
        if len(self._contexts) > _MAX_CACHED_CONTEXTS:
            self._contexts.popitem(last=False)
        return context

    def _leaf_pem(self, host: str) -> bytes:
        now = datetime.datetime.now(datetime.UTC)
        alt_name: x509.GeneralName = (
            x509.IPAddress(ipaddress.ip_address(host)) if is_ip_literal(host) else x509.DNSName(host)
        )
        public = self._leaf_key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(min(now + _LEAF_VALIDITY, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM) + key_pem

    def remove_files(self) -> None:
        for path in (self.cert_path, self.key_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
