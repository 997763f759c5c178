"""Signed model releases: the maintainers sign a manifest, users verify it before loading weights.

A release is three files side by side: `NAME.pth` (the checkpoint), `NAME.pth.manifest.json`
(sha256 of the weights file, classes, feature settings, round, held-out metrics, version, signer
fingerprint) and `NAME.pth.sig` (a detached Ed25519 signature over the manifest bytes). The
signature covers the manifest, the manifest covers the weights by hash, so changing either
byte-for-byte is caught.

Trust policy (`check_model`): with no trust key configured nothing is verified (a plain local
model keeps working as before); with one (`--trust-key` or env BEATSIGHT_TRUST_KEY) a model
must carry a valid signature by that key, unless `--allow-unsigned` is given for a local model
that has no signature files at all (a present but bad signature is always refused).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .atomic import atomic_write, atomic_write_text, file_sha256
from .errors import BeatSightError

log = logging.getLogger(__name__)

TRUST_ENV = "BEATSIGHT_TRUST_KEY"
PRIVATE_NAME = "beatsight_release.key"
PUBLIC_NAME = "beatsight_release.pub"
MANIFEST_FORMAT = "beatsight-release"
MANIFEST_VERSION = 1


def manifest_path(model: str | Path) -> Path:
    return Path(f"{model}.manifest.json")


def signature_path(model: str | Path) -> Path:
    return Path(f"{model}.sig")




def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """Short, stable name of a public key (shown to users, recorded in manifests)."""
    return "sha256:" + hashlib.sha256(_raw_public(key)).hexdigest()[:32]


def generate_keys(directory: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 pair: private key PEM with mode 0600, public key PEM (to publish)."""
    directory = Path(directory)
    priv_path, pub_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if priv_path.exists() and not overwrite:
        raise BeatSightError(f"{priv_path}: a release key already exists; keep it (users trust "
                             "its public half) or move it away first")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(priv_path, 0o600)  # also when the file existed with a looser mode
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(pub_path, lambda fh: fh.write(pub))
    return priv_path, pub_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise BeatSightError(f"{path}: cannot read the private key ({exc.strerror})") from None
    except (ValueError, TypeError):
        raise BeatSightError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BeatSightError(f"{path}: not an Ed25519 key (use `beatsight-server keys`)")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise BeatSightError(f"{path}: cannot read the trust key ({exc.strerror})") from None
    except (ValueError, TypeError):
        raise BeatSightError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BeatSightError(f"{path}: not an Ed25519 public key")
    return key


def build_manifest(model: Path, heldout: dict | None = None) -> dict:
    """What a release states about its weights; read from the checkpoint itself."""
    from .checkpoint import read_checkpoint

    ckpt = read_checkpoint(model)
    metrics = heldout if heldout is not None else ckpt.metrics
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "file": model.name,
        "sha256": file_sha256(model),
        "size": model.stat().st_size,
        "model_version": ckpt.model_version,
        "classes": list(ckpt.classes),
        "features": ckpt.features.to_dict(),
        "round": ckpt.extra.get("round"),
        "heldout_metrics": {k: v for k, v in (metrics or {}).items()
                            if isinstance(v, (int, float, str))},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def release(model: str | Path, private_key: str | Path, out_dir: str | Path,
            heldout: dict | None = None) -> tuple[Path, Path, Path]:
    """Copy `model` into `out_dir` with its manifest and signature; returns the three paths."""
    model, out_dir = Path(model), Path(out_dir)
    key = load_private_key(private_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / model.name
    data = model.read_bytes()
    if target.resolve() != model.resolve():
        atomic_write(target, lambda fh: fh.write(data))
    manifest = build_manifest(target, heldout)
    manifest["signer"] = fingerprint(key.public_key())
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    sig = base64.b64encode(key.sign(body)).decode() + "\n"
    atomic_write(manifest_path(target), lambda fh: fh.write(body))
    atomic_write_text(signature_path(target), sig)
    return target, manifest_path(target), signature_path(target)


def verify_release(model: str | Path, public_key: str | Path | Ed25519PublicKey) -> dict:
    """The manifest of a release signed by `public_key` whose weights are unchanged; else one line."""
    model = Path(model)
    key = public_key if isinstance(public_key, Ed25519PublicKey) else load_public_key(public_key)
    man_p, sig_p = manifest_path(model), signature_path(model)
    if not model.is_file():
        raise BeatSightError(f"{model}: no such model file")
    if not sig_p.is_file() or not man_p.is_file():
        missing = sig_p if not sig_p.is_file() else man_p
        raise BeatSightError(f"{model}: unsigned model (no {missing.name}); get the signed release "
                             "or pass --allow-unsigned for a model you trained yourself")
    body = man_p.read_bytes()
    try:
        manifest = json.loads(body)
        if not isinstance(manifest, dict):
            raise ValueError
    except ValueError:
        raise BeatSightError(f"{man_p}: manifest is not valid JSON (tampered or corrupt)") from None
    signer = manifest.get("signer")
    if signer != fingerprint(key):
        raise BeatSightError(f"{model}: signed by a different key ({signer}), not the trusted "
                             f"{fingerprint(key)}")
    try:
        sig = base64.b64decode(sig_p.read_bytes().strip(), validate=True)
        key.verify(sig, body)
    except (ValueError, InvalidSignature):
        raise BeatSightError(f"{model}: bad signature: the manifest was modified after signing "
                             "(or the .sig file is corrupt)") from None
    if file_sha256(model) != manifest.get("sha256"):
        raise BeatSightError(f"{model}: weights do not match the signed manifest (sha256 differs): "
                             "the file was modified or replaced")
    return manifest


def trust_key(option: str | Path | None) -> Path | None:
    """The configured trust key: the option, else env BEATSIGHT_TRUST_KEY, else None."""
    if option:
        return Path(option)
    env = os.environ.get(TRUST_ENV, "").strip()
    return Path(env) if env else None


def check_model(model: str | Path, key: str | Path | None, allow_unsigned: bool = False
                ) -> dict | None:
    """Apply the trust policy before a model is loaded; returns the manifest when verified."""
    key_path = trust_key(key)
    model = Path(model)
    if key_path is None:
        return None
    if allow_unsigned and not signature_path(model).exists() and not manifest_path(model).exists():
        log.warning("%s: unsigned model loaded because of --allow-unsigned", model)
        return None
    manifest = verify_release(model, key_path)
    log.info("%s: signature verified (%s, %s)", model, manifest.get("model_version"),
             manifest.get("signer"))
    return manifest
