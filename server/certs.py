"""The federation's own TLS: a private CA and a SuperLink certificate, written with `cryptography`.

Contributors get `ca.pem` (public) and pin it with `--ca`; the private keys never leave the
server and are written 0600. The CA is kept across re-runs so certificates already handed out
stay valid; only the server certificate is re-issued (e.g. to add a host name).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from beatsight.common.atomic import atomic_write, write_private
from beatsight.common.errors import BeatSightError

CA_DAYS = 3650
SERVER_DAYS = 825  # the longest lifetime common TLS clients accept for a leaf certificate


@dataclass(frozen=True)
class CertPaths:
    """Where `beatsight-server init` keeps the TLS material inside the state directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def check(self) -> None:
        """Fail with one line if `init` has not been run (or a file went missing)."""
        for p in (self.ca_cert, self.server_cert, self.server_key):
            if not p.is_file():
                raise BeatSightError(f"{p} is missing: run `beatsight-server init --dir {self.root}` first")




def _write_public(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))
    path.chmod(0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "BeatSight Federated"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _san(hosts: Sequence[str], ips: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in dict.fromkeys(hosts)]
    for ip in dict.fromkeys(ips):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise BeatSightError(f"--ip {ip!r} is not an IP address (use --host for names)") from None
    if not names:
        raise BeatSightError("the server certificate needs at least one --host or --ip")
    return x509.SubjectAlternativeName(names)


def _server_cert(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, hosts: Sequence[str],
                 ips: Sequence[str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cn = (list(hosts) or list(ips))[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=SERVER_DAYS))
        .add_extension(_san(hosts, ips), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _load_ca(paths: CertPaths) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise BeatSightError(f"{paths.ca_key}: cannot read the existing CA ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BeatSightError(f"{paths.ca_key}: not an EC private key")
    return key, cert


LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)


def init_certs(root: Path, hosts: Sequence[str] = (), ips: Sequence[str] = (),
               ca_name: str = "BeatSight Federated CA") -> bool:
    """Create the CA (unless it exists) and (re-)issue the server certificate.

    localhost/127.0.0.1 are always in the certificate: the SuperLink's own ServerApp process
    reaches it over loopback and verifies it against the same CA. Returns True if a new CA
    was created; an existing CA is reused so the `ca.pem` contributors already have keeps working.
    """
    hosts = [*hosts, *LOOPBACK_NAMES]
    ips = [*ips, *LOOPBACK_IPS]
    paths = CertPaths(root)
    root.mkdir(parents=True, exist_ok=True)
    created = False
    if paths.ca_cert.exists() and paths.ca_key.exists():
        ca_key, ca = _load_ca(paths)
    elif paths.ca_cert.exists() or paths.ca_key.exists():
        raise BeatSightError(f"{root}: ca.pem and ca.key must both exist or both be absent")
    else:
        ca_key, ca = _new_ca(ca_name)
        write_private(paths.ca_key, _key_pem(ca_key))
        _write_public(paths.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
        created = True
    key, cert = _server_cert(ca_key, ca, hosts, ips)
    write_private(paths.server_key, _key_pem(key))
    _write_public(paths.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    return created


def server_names(cert_path: Path) -> list[str]:
    """Host names and IPs a server certificate is valid for (for `status` and error messages)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def cert_expiry(cert_path: Path) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc
