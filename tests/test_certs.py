"""TLS material, contributor keys, the registry: real files, a real TLS handshake, Flower's key parser."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner

from beatsight.client import keys
from beatsight.common.errors import BeatSightError
from beatsight.server.certs import CertPaths, init_certs, server_names
from beatsight.server.cli import app as server_app
from beatsight.server.registry import Registry


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_writes_ca_and_server_cert(tmp_path: Path) -> None:
    assert init_certs(tmp_path, ["fl.example.org"], ["10.1.2.3"]) is True
    c = CertPaths(tmp_path)
    assert _mode(c.ca_key) == 0o600 and _mode(c.server_key) == 0o600
    assert _mode(c.ca_cert) == 0o644
    ca = x509.load_pem_x509_certificate(c.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(c.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert set(server_names(c.server_cert)) == {"fl.example.org", "localhost", "10.1.2.3", "127.0.0.1"}
    key = serialization.load_pem_private_key(c.server_key.read_bytes(), None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()


def test_reinit_keeps_the_ca_and_reissues_the_server_cert(tmp_path: Path) -> None:
    init_certs(tmp_path)
    c = CertPaths(tmp_path)
    ca_before, server_before = c.ca_cert.read_bytes(), c.server_cert.read_bytes()
    assert init_certs(tmp_path, ["new.example.org"]) is False
    assert c.ca_cert.read_bytes() == ca_before
    assert c.server_cert.read_bytes() != server_before
    assert "new.example.org" in server_names(c.server_cert)
    ca = x509.load_pem_x509_certificate(ca_before)
    x509.load_pem_x509_certificate(c.server_cert.read_bytes()).verify_directly_issued_by(ca)


def test_bad_ip_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(BeatSightError, match="not an IP address"):
        init_certs(tmp_path, ips=["fl.example.org"])


def _tls_server(certs: CertPaths) -> tuple[int, threading.Thread]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server_cert, certs.server_key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.settimeout(10)

    def serve() -> None:
        with sock:
            for _ in range(3):
                try:
                    conn, _ = sock.accept()
                    with ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"ok")
                except (OSError, ssl.SSLError):
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return sock.getsockname()[1], t


def _handshake(port: int, cafile: Path, host: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            return tls.recv(2)


def test_real_tls_handshake_needs_our_ca_and_a_listed_name(tmp_path: Path) -> None:
    init_certs(tmp_path / "ours")
    init_certs(tmp_path / "other")
    ours = CertPaths(tmp_path / "ours")
    port, t = _tls_server(ours)
    assert _handshake(port, ours.ca_cert, "localhost") == b"ok"
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(port, CertPaths(tmp_path / "other").ca_cert, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(port, ours.ca_cert, "not-in-the-cert.example.org")
    t.join(timeout=10)


def test_keygen_files_permissions_and_flower_accepts_the_key(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    priv, pub, line = keys.generate(tmp_path, "alice")
    assert _mode(priv) == 0o600
    assert pub.read_text().strip() == line and line.endswith(" alice")
    keys.check_private_key(priv)
    private = serialization.load_ssh_private_key(priv.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    public = serialization.load_ssh_public_key(line.encode())
    assert public.public_numbers() == private.public_key().public_numbers()
    assert try_load_public_key(pub)  # Flower's own parser (`flwr supernode register`)
    assert keys.fingerprint(line).startswith("SHA256:") and "=" not in keys.fingerprint(line)
    with pytest.raises(BeatSightError, match="already exists"):
        keys.generate(tmp_path, "alice")
    keys.generate(tmp_path, "alice", overwrite=True)
    assert pub.read_text().strip() != line


def test_private_key_checks(tmp_path: Path) -> None:
    priv, _, _ = keys.generate(tmp_path, "bob")
    priv.chmod(0o644)
    with pytest.raises(BeatSightError, match="chmod 600"):
        keys.check_private_key(priv)
    rsa_key = tmp_path / "rsa"
    rsa_key.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    rsa_key.chmod(0o600)
    with pytest.raises(BeatSightError, match="EC private key"):
        keys.check_private_key(rsa_key)
    with pytest.raises(BeatSightError, match="cannot read"):
        keys.check_private_key(tmp_path / "missing")
    with pytest.raises(BeatSightError, match="name"):
        keys.generate(tmp_path / "x", "../evil")


def test_registry_records_and_refuses_duplicates(tmp_path: Path) -> None:
    _, pub_a, line_a = keys.generate(tmp_path / "a", "alice")
    _, pub_b, _ = keys.generate(tmp_path / "b", "alice")
    reg = Registry(tmp_path / "contributors.json")
    entry = reg.add(pub_a)
    assert entry.name == "alice" and entry.fingerprint == keys.fingerprint(line_a)
    with pytest.raises(BeatSightError, match="already registered as 'alice'"):
        reg.add(pub_a, name="alice2")
    with pytest.raises(BeatSightError, match="already exists"):
        reg.add(pub_b)
    reg.add(pub_b, name="bob")
    reg.set_node_id("bob", 42)
    again = Registry(tmp_path / "contributors.json")
    assert [c.name for c in again.contributors] == ["alice", "bob"]
    assert again.name_of(42) == "bob" and [c.name for c in again.pending()] == ["alice"]
    not_a_key = tmp_path / "x.pub"
    not_a_key.write_text("hello\n")
    with pytest.raises(BeatSightError, match="not an OpenSSH public key"):
        reg.add(not_a_key)


def test_server_cli_offline_init_register_contributors(tmp_path: Path) -> None:
    runner = CliRunner()
    state = tmp_path / "state"
    res = runner.invoke(server_app, ["init", "--dir", str(state), "--host", "fl.example.org"])
    assert res.exit_code == 0, res.output
    assert "created CA" in res.output and (state / "ca.pem").is_file()
    _, pub, _ = keys.generate(tmp_path / "k", "carol")
    res = runner.invoke(server_app, ["register", str(pub), "--dir", str(state)])
    assert res.exit_code == 0, res.output
    assert "recorded carol" in res.output  # no SuperLink running: registered at the next start
    res = runner.invoke(server_app, ["contributors", "--dir", str(state)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "carol" in res.output and "pending" in res.output
    res = runner.invoke(server_app, ["start", "--dir", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and isinstance(res.exception, BeatSightError)
    assert "beatsight-server init" in str(res.exception)
