"""Signed releases: sign, verify, and every kind of tampering refused with one line."""

from __future__ import annotations

import json
import stat

import pytest
import torch
from typer.testing import CliRunner

from beatsight.common.checkpoint import Checkpoint, save_checkpoint
from beatsight.common.errors import BeatSightError
from beatsight.common.model import DrumClassifierCNN
from beatsight.common.signing import (
    TRUST_ENV,
    check_model,
    generate_keys,
    manifest_path,
    release,
    signature_path,
    verify_release,
)

runner = CliRunner()


@pytest.fixture()
def model_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "global_model.pth"
    save_checkpoint(path, Checkpoint(state_dict=DrumClassifierCNN().state_dict(),
                                     model_version="federated-r3", metrics={"accuracy": 0.71},
                                     extra={"round": 3}))
    return path


@pytest.fixture()
def keys(tmp_path):
    return generate_keys(tmp_path / "keys")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_keys_private_mode_and_no_silent_overwrite(keys, tmp_path):
    priv, pub = keys
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in pub.read_bytes()
    with pytest.raises(BeatSightError, match="already exists"):
        generate_keys(tmp_path / "keys")


def test_release_roundtrip_manifest_contents(model_file, keys, tmp_path):
    priv, pub = keys
    target, man, sig = release(model_file, priv, tmp_path / "rel")
    manifest = verify_release(target, pub)
    assert manifest == json.loads(man.read_text())
    assert manifest["round"] == 3 and manifest["model_version"] == "federated-r3"
    assert manifest["heldout_metrics"] == {"accuracy": 0.71}
    from beatsight.common.features import DEFAULT_SETTINGS

    assert len(manifest["classes"]) == 12 and manifest["features"] == DEFAULT_SETTINGS.to_dict()
    assert len(manifest["sha256"]) == 64 and sig.read_text().strip()


def test_tampering_is_refused(model_file, keys, tmp_path):
    priv, pub = keys
    target, man, sig = release(model_file, priv, tmp_path / "rel")

    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BeatSightError, match="weights do not match") as exc:
        verify_release(target, pub)
    _one_line(exc)

    target, man, sig = release(model_file, priv, tmp_path / "rel")
    good = man.read_text()
    man.write_text(good.replace('"round": 3', '"round": 9'))
    with pytest.raises(BeatSightError, match="manifest was modified") as exc:
        verify_release(target, pub)
    _one_line(exc)
    man.write_text("{not json")
    with pytest.raises(BeatSightError, match="not valid JSON"):
        verify_release(target, pub)
    man.write_text(good)
    verify_release(target, pub)

    _, other_pub = generate_keys(tmp_path / "other")
    with pytest.raises(BeatSightError, match="different key") as exc:
        verify_release(target, other_pub)
    _one_line(exc)

    sig.unlink()
    with pytest.raises(BeatSightError, match="unsigned") as exc:
        verify_release(target, pub)
    _one_line(exc)


def test_trust_policy(model_file, keys, tmp_path, monkeypatch):
    priv, pub = keys
    monkeypatch.delenv(TRUST_ENV, raising=False)
    assert check_model(model_file, None) is None  # no trust key: plain local models load
    with pytest.raises(BeatSightError, match="unsigned"):
        check_model(model_file, pub)
    assert check_model(model_file, pub, allow_unsigned=True) is None
    monkeypatch.setenv(TRUST_ENV, str(pub))
    with pytest.raises(BeatSightError, match="unsigned"):
        check_model(model_file, None)
    target, _, _ = release(model_file, priv, tmp_path / "rel")
    assert check_model(target, None)["round"] == 3
    # --allow-unsigned never excuses a present but broken signature
    signature_path(target).write_text("AAAA\n")
    with pytest.raises(BeatSightError, match="bad signature"):
        check_model(target, None, allow_unsigned=True)
    assert manifest_path(target).exists()


def test_clis_sign_verify_and_refuse(model_file, tmp_path, monkeypatch):
    from beatsight.client.cli import app as client_app
    from beatsight.common.cli import app as common_app
    from beatsight.server.cli import app as server_app

    monkeypatch.delenv(TRUST_ENV, raising=False)
    r = runner.invoke(server_app, ["keys", "--dir", str(tmp_path / "k")])
    assert r.exit_code == 0, r.output
    priv, pub = tmp_path / "k" / "beatsight_release.key", tmp_path / "k" / "beatsight_release.pub"
    r = runner.invoke(server_app, ["release", str(model_file), "--key", str(priv),
                                   "--out", str(tmp_path / "rel")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(server_app, ["verify", str(tmp_path / "rel" / model_file.name),
                                   "--trust-key", str(pub)])
    assert r.exit_code == 0 and "valid signature" in r.output

    # process --ml-model and train --init-from refuse an unsigned model when a key is trusted
    r = runner.invoke(common_app, ["process", "-i", str(tmp_path / "song.wav"), "-o",
                                   str(tmp_path / "out.bsm"), "--ml-model", str(model_file),
                                   "--trust-key", str(pub)])
    assert r.exit_code != 0 and "unsigned model" in str(r.exception)
    assert not (tmp_path / "out.bsm").exists()
    monkeypatch.setenv(TRUST_ENV, str(pub))
    r = runner.invoke(client_app, ["train", "--dataset", str(tmp_path / "nodata"), "--init-from",
                                   str(model_file), "--output", str(tmp_path / "m")])
    assert r.exit_code != 0 and "unsigned model" in str(r.exception)
