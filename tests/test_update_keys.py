"""Signing keys of the update repository: encrypted at rest, refused with a wrong or weak
passphrase, exported for offline keeping, and the key CLI's error messages."""

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from pydantic import SecretStr
from typer.testing import CliRunner

from controller.cli.main import app
from controller.updates.errors import KeyStoreError, RepositoryStateError
from controller.updates.keys import (
    PASSPHRASE_ENV,
    KeyStore,
    decrypt_private_keys,
    encrypt_private_key,
    load_key_file,
    read_passphrase,
)
from controller.updates.repository import TufRepository

PASSPHRASE = "tuf keys for the tests"


def store(tmp_path: Path, passphrase: str | None = PASSPHRASE) -> KeyStore:
    return KeyStore(tmp_path / "keys", SecretStr(passphrase) if passphrase is not None else None)


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "controller.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "environment": "development",
                "database_url": f"sqlite:///{tmp_path / 'controller.db'}",
                "updates": {
                    "repo_dir": str(tmp_path / "repo"),
                    "keys_dir": str(tmp_path / "keys"),
                },
            }
        )
    )
    made = CliRunner().invoke(app, ["db", "init", "--config", str(config)])
    assert made.exit_code == 0, made.output
    return config


def test_key_files_are_encrypted_and_private(tmp_path: Path) -> None:
    """A generated key file is an encrypted PKCS#8 PEM of mode 0600 in a 0700 folder, and
    cannot be loaded without the passphrase."""
    keys = store(tmp_path)
    public = keys.generate("timestamp")
    path = keys.dir / f"timestamp.{public.keyid}.pem"
    data = path.read_bytes()
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
    assert b"-----BEGIN PRIVATE KEY-----" not in data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.dir.stat().st_mode) == 0o700
    with pytest.raises(TypeError):
        load_pem_private_key(data, None)
    private = load_pem_private_key(data, PASSPHRASE.encode())
    assert isinstance(private, Ed25519PrivateKey)
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    assert raw not in data


def test_wrong_passphrase_is_refused_without_revealing_it(tmp_path: Path) -> None:
    """Decrypting with the wrong passphrase raises KeyStoreError naming the file, and neither
    passphrase appears in the message or the key store's repr."""
    public = store(tmp_path).generate("targets")
    wrong = store(tmp_path, "not the right passphrase")
    with pytest.raises(KeyStoreError, match="wrong passphrase") as info:
        wrong.signers({public.keyid: public})
    assert f"targets.{public.keyid}.pem" in str(info.value)
    assert "not the right" not in str(info.value) and PASSPHRASE not in str(info.value)
    assert "not the right" not in repr(wrong) and "not the right" not in str(vars(wrong))


@pytest.mark.parametrize(
    ("passphrase", "reason"),
    [
        (None, "no key passphrase"),
        ("", "placeholder"),
        ("changeme", "placeholder"),
        ("Password", "placeholder"),
        ("short", "shorter than"),
    ],
    ids=["missing", "empty", "changeme", "password-any-case", "too-short"],
)
def test_weak_passphrases_are_refused(tmp_path: Path, passphrase: str | None, reason: str) -> None:
    """No key is written with a missing, placeholder or short passphrase."""
    keys = store(tmp_path, passphrase)
    with pytest.raises(KeyStoreError, match=reason):
        keys.generate("root")
    assert keys.files() == {}


def test_passphrase_comes_from_file_or_environment(tmp_path: Path) -> None:
    """The passphrase file wins (its trailing newline dropped); otherwise the environment
    variable is used; neither gives None."""
    file = tmp_path / "pass"
    file.write_text("from the file\n")
    env = {PASSPHRASE_ENV: "from the environment"}
    from_file = read_passphrase(file, env)
    from_env = read_passphrase(None, env)
    assert from_file is not None and from_file.get_secret_value() == "from the file"
    assert from_env is not None and from_env.get_secret_value() == "from the environment"
    assert read_passphrase(None, {}) is None
    with pytest.raises(KeyStoreError, match="cannot read passphrase file"):
        read_passphrase(tmp_path / "missing", env)


def test_plaintext_key_files_are_refused(tmp_path: Path) -> None:
    """An unencrypted PEM key is never used for signing."""
    plain = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    file = tmp_path / "plain.pem"
    file.write_bytes(plain)
    with pytest.raises(KeyStoreError, match="unencrypted"):
        load_key_file(file, SecretStr(PASSPHRASE))


def test_export_moves_keys_out_and_the_bundle_still_signs(tmp_path: Path) -> None:
    """export writes the chosen keys, still encrypted, to one 0600 file and removes the
    online copies; the bundle loads as signers with the same passphrase."""
    keys = store(tmp_path)
    first, second = keys.generate("root"), keys.generate("root")
    kept = keys.generate("timestamp")
    out = tmp_path / "offline" / "root-keys.pem"
    exported = keys.export([first.keyid, second.keyid], out, keep=False)
    assert exported == [first.keyid, second.keyid]
    assert set(keys.files()) == {kept.keyid}
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" not in out.read_bytes()
    signers = load_key_file(out, SecretStr(PASSPHRASE))
    assert [s.public_key.keyid for s in signers] == [first.keyid, second.keyid]
    with pytest.raises(KeyStoreError, match="already exists"):
        keys.export([kept.keyid], out, keep=True)


def test_export_with_keep_leaves_the_online_copy(tmp_path: Path) -> None:
    """--keep exports without removing the key from the online folder."""
    keys = store(tmp_path)
    public = keys.generate("root")
    keys.export([public.keyid], tmp_path / "copy.pem", keep=True)
    assert public.keyid in keys.files()


def test_encrypt_then_decrypt_roundtrip(tmp_path: Path) -> None:
    """A key encrypted with a passphrase decrypts to the same key with it."""
    private = Ed25519PrivateKey.generate()
    pem = encrypt_private_key(private, SecretStr(PASSPHRASE))
    [back] = decrypt_private_keys(pem, SecretStr(PASSPHRASE), "test.pem")
    assert back.public_key() == private.public_key()


# --- the CLI -------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_init_creates_keys_and_metadata(tmp_path: Path) -> None:
    """'keys init' with a passphrase from the environment makes 3 root keys (threshold 2),
    one key per other role, and version 1 of every metadata file."""
    config = write_config(tmp_path)
    result = runner.invoke(
        app,
        ["keys", "init", "--config", str(config), "--root-keys", "3", "--root-threshold", "2"],
        env={PASSPHRASE_ENV: PASSPHRASE},
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "repo" / "metadata").iterdir())
    assert names == ["1.root.json", "1.snapshot.json", "1.targets.json", "timestamp.json"]
    roles = sorted(p.name.split(".")[0] for p in (tmp_path / "keys").glob("*.pem"))
    assert roles == ["root", "root", "root", "snapshot", "targets", "timestamp"]
    assert PASSPHRASE not in result.output
    again = runner.invoke(
        app, ["keys", "init", "--config", str(config)], env={PASSPHRASE_ENV: PASSPHRASE}
    )
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_cli_init_without_passphrase_explains(tmp_path: Path) -> None:
    """'keys init' with no passphrase exits 1 with a one-line reason, no traceback."""
    config = write_config(tmp_path)
    result = runner.invoke(app, ["keys", "init", "--config", str(config)], env={PASSPHRASE_ENV: ""})
    assert result.exit_code == 1
    assert "placeholder" in result.output
    assert "Traceback" not in result.output


def test_cli_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    """A signing command with the wrong passphrase exits 1 saying so, without a traceback."""
    config = write_config(tmp_path)
    runner.invoke(app, ["keys", "init", "--config", str(config)], env={PASSPHRASE_ENV: PASSPHRASE})
    result = runner.invoke(
        app,
        ["keys", "refresh", "--force", "timestamp", "--config", str(config)],
        env={PASSPHRASE_ENV: "a different passphrase"},
    )
    assert result.exit_code == 1
    assert "wrong passphrase" in result.output
    assert "Traceback" not in result.output and "different" not in result.output


def test_cli_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    """Re-signing with the timestamp key gone names the role and the keys folder."""
    config = write_config(tmp_path)
    runner.invoke(app, ["keys", "init", "--config", str(config)], env={PASSPHRASE_ENV: PASSPHRASE})
    for path in (tmp_path / "keys").glob("timestamp.*.pem"):
        path.unlink()
    result = runner.invoke(
        app,
        ["keys", "refresh", "--force", "timestamp", "--config", str(config)],
        env={PASSPHRASE_ENV: PASSPHRASE},
    )
    assert result.exit_code == 1
    assert "timestamp needs 1 signature(s) but 0" in result.output


def test_cli_corrupt_metadata_is_a_clear_error(tmp_path: Path) -> None:
    """A damaged timestamp.json makes 'keys status' exit 1 naming the file, no traceback."""
    config = write_config(tmp_path)
    runner.invoke(app, ["keys", "init", "--config", str(config)], env={PASSPHRASE_ENV: PASSPHRASE})
    (tmp_path / "repo" / "metadata" / "timestamp.json").write_text('{"signed": ')
    result = runner.invoke(app, ["keys", "status", "--config", str(config)])
    assert result.exit_code == 1
    assert "timestamp.json is corrupt" in result.output
    assert "Traceback" not in result.output


def test_cli_export_root_then_rotation_needs_the_offline_key(tmp_path: Path) -> None:
    """After 'export-root', rotating the timestamp key leaves a draft; 'sign-root' with the
    exported file and 'publish-root' complete it, and the new timestamp key signs."""
    config = write_config(tmp_path)
    env = {PASSPHRASE_ENV: PASSPHRASE}
    runner.invoke(app, ["keys", "init", "--config", str(config)], env=env)
    offline = tmp_path / "offline-root.pem"
    result = runner.invoke(
        app, ["keys", "export-root", "--out", str(offline), "--config", str(config)], env=env
    )
    assert result.exit_code == 0, result.output
    assert not list((tmp_path / "keys").glob("root.*.pem"))

    result = runner.invoke(app, ["keys", "rotate", "timestamp", "--config", str(config)], env=env)
    assert result.exit_code == 0, result.output
    draft = tmp_path / "repo" / "drafts" / "2.root.json"
    assert draft.is_file() and "0/1 keys of root v1" in result.output

    early = runner.invoke(app, ["keys", "publish-root", str(draft), "--config", str(config)])
    assert early.exit_code == 1 and "not enough signatures" in early.output

    signed = runner.invoke(
        app,
        ["keys", "sign-root", str(draft), "--key", str(offline), "--config", str(config)],
        env=env,
    )
    assert signed.exit_code == 0, signed.output
    published = runner.invoke(
        app, ["keys", "publish-root", str(draft), "--config", str(config)], env=env
    )
    assert published.exit_code == 0, published.output
    assert "re-signed with the new keys: timestamp" in published.output

    repo = TufRepository(tmp_path / "repo", store(tmp_path))
    state = repo.load()
    assert state.versions()["root"] == 2
    [new_id] = state.root.signed.roles["timestamp"].keyids
    assert new_id in state.timestamp.signatures


def test_cli_sign_root_refuses_a_foreign_key(tmp_path: Path) -> None:
    """sign-root with a key that is not a root key of either version exits 1."""
    config = write_config(tmp_path)
    env = {PASSPHRASE_ENV: PASSPHRASE}
    runner.invoke(app, ["keys", "init", "--config", str(config)], env=env)
    draft = tmp_path / "draft.json"
    result = runner.invoke(
        app, ["keys", "root-draft", "--out", str(draft), "--config", str(config)], env=env
    )
    assert result.exit_code == 0, result.output
    stranger = KeyStore(tmp_path / "elsewhere", SecretStr(PASSPHRASE))
    public = stranger.generate("root")
    key_file = tmp_path / "elsewhere" / f"root.{public.keyid}.pem"
    result = runner.invoke(
        app,
        ["keys", "sign-root", str(draft), "--key", str(key_file), "--config", str(config)],
        env=env,
    )
    assert result.exit_code == 1
    assert "is not a root key" in result.output


def test_repository_refuses_to_publish_under_an_expired_root(tmp_path: Path) -> None:
    """With root expired, publishing says root expired and how to renew it."""
    repo = TufRepository(tmp_path / "repo", store(tmp_path))
    long_ago = datetime.now(UTC) - timedelta(days=400)
    repo.initialize(now=long_ago)
    with pytest.raises(RepositoryStateError, match=r"root v1 expired .* root-draft"):
        repo.refresh(now=datetime.now(UTC))
    assert repo.load().versions()["timestamp"] == 1
