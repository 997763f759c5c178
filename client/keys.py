"""A contributor's identity: an EC key pair in OpenSSH format (what Flower's node authentication reads).

The private key stays on the contributor's machine (0600); the public key is sent to the
maintainers, who register it. The fingerprint is ssh-keygen's (`SHA256:...`), so both sides
can compare it by eye over another channel.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from beatsight.common.atomic import atomic_write, write_private
from beatsight.common.errors import BeatSightError

PRIVATE_NAME = "beatsight_node"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    """Contributor names end up in file names and logs: keep them to a safe alphabet."""
    if not NAME_RE.match(name):
        raise BeatSightError(f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def fingerprint(public_line: str) -> str:
    """ssh-keygen -l style fingerprint of an OpenSSH public key line."""
    parts = public_line.split()
    if len(parts) < 2:
        raise BeatSightError("not an OpenSSH public key line")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise BeatSightError("not an OpenSSH public key line (bad base64)") from None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def read_public_key(path: Path) -> tuple[str, str]:
    """(key line without comment, comment) of an EC OpenSSH public key; one-line error otherwise."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BeatSightError(f"{path}: cannot read the public key ({exc.__class__.__name__})") from None
    try:
        key = serialization.load_ssh_public_key(text.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise BeatSightError(f"{path}: not an OpenSSH public key (expected 'ecdsa-sha2-nistp384 ...')") \
            from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise BeatSightError(f"{path}: Flower needs an EC (ecdsa-sha2-nistp*) key, not {text.split()[0]}")
    parts = text.split(maxsplit=2)
    return " ".join(parts[:2]), (parts[2] if len(parts) > 2 else "")


def check_private_key(path: Path) -> None:
    """Fail early (one line) if flower-supernode could not load this key."""
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise BeatSightError(f"{path}: cannot read the private key ({exc.strerror})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BeatSightError(f"{path}: not an unencrypted OpenSSH EC private key "
                             "(make one with `beatsight-client keygen`)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BeatSightError(f"{path}: Flower needs an EC private key")
    if path.stat().st_mode & 0o077:
        raise BeatSightError(f"{path}: private key is readable by others; run `chmod 600 {path}`")


def generate(out_dir: Path, name: str, overwrite: bool = False) -> tuple[Path, Path, str]:
    """Write `<out>/beatsight_node` (0600) and `<out>/beatsight_node.pub`; returns (priv, pub, line).

    Refuses to replace an existing key: a lost key means re-registering with the maintainers.
    """
    check_name(name)
    priv, pub = out_dir / PRIVATE_NAME, out_dir / f"{PRIVATE_NAME}.pub"
    if not overwrite and (priv.exists() or pub.exists()):
        raise BeatSightError(f"{priv} already exists; keep it, or pass --force to replace it "
                             "(the maintainers must then register the new public key)")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption())
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    line = f"{line} {name}"
    write_private(priv, private_bytes)
    atomic_write(pub, lambda fh: fh.write((line + "\n").encode()))
    pub.chmod(0o644)
    return priv, pub, line
