"""Signed checkpoints (`service.audit.notes`) against the C2SP formats, recomputed
here with hashlib, base64 and `cryptography` rather than through the module:

- tlog-checkpoint: the body is `<origin>\\n<tree size>\\n<base64 root hash>\\n`;
- signed-note: the body, a blank line, then `— <key name> <base64(key id ‖ sig)>\\n`,
  the signature being Ed25519 over the body's bytes and the key id the first four
  bytes of SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key); the verifier key is
  `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.
"""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from service.audit import notes

NAME = "example.com/audit"
ROOT = hashlib.sha256(b"a root").digest()
EM_DASH = "\u2014"
ED25519 = b"\x01"  # the signature type of an Ed25519 key
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)


def expected_key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\x0a" + b"\x01" + public).digest()[:4]


def expected_vkey(name: str, public: bytes) -> str:
    return f"{name}+{expected_key_id(name, public).hex()}+{b64(ED25519 + public)}"


def fixed_key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def key_part(vkey: str) -> str:
    """The base64 key of a verifier key (the name and hex id hold no '+')."""
    return vkey.split("+", 2)[2]


CLEAN_SEED = 0  # a key whose verifier key's base64 holds no '+'


@pytest.fixture
def signer() -> notes.Signer:
    return notes.Signer(fixed_key(CLEAN_SEED), NAME)


@pytest.fixture
def verifier() -> notes.Verifier:
    return notes.Verifier(expected_vkey(NAME, raw_public(fixed_key(CLEAN_SEED))))


# -- keys -----------------------------------------------------------------------------


def test_a_new_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-key.pem"
    notes.write_new_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    with pytest.raises(FileExistsError):
        notes.write_new_key(path)
    assert path.read_bytes() == pem
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = tmp_path / "other.pem"
    notes.write_new_key(other)
    assert other.read_bytes() != pem


@pytest.mark.parametrize("name", [notes.DEFAULT_LOG_NAME, NAME, "ünïcode.example/lög"])
def test_key_id_and_verifier_key_from_a_key_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / "key.pem"
    notes.write_new_key(path)
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    public = raw_public(private)
    signer = notes.Signer.from_file(path, name)
    assert signer.name == name
    assert signer.public == public
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]
    assert signer.key_id == key_id == notes.key_id(name, public)
    key = base64.b64encode(b"\x01" + public).decode()
    assert signer.verifier_key == f"{name}+{key_id.hex()}+{key}"
    if name == notes.DEFAULT_LOG_NAME:
        assert notes.Signer.from_file(path).verifier_key == signer.verifier_key


def test_the_default_log_name_is_a_valid_key_name() -> None:
    name = notes.DEFAULT_LOG_NAME
    assert name and "+" not in name and not any(c.isspace() for c in name)


# -- the checkpoint note, byte for byte -------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4097, 10**18])
def test_the_checkpoint_note_is_exactly_the_c2sp_text(tmp_path: Path, size: int) -> None:
    path = tmp_path / "key.pem"
    notes.write_new_key(path)
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    public = raw_public(private)
    key_id = expected_key_id(NAME, public)
    note = notes.Signer.from_file(path, NAME).checkpoint(size, ROOT)

    body = f"{NAME}\n{size}\n{b64(ROOT)}\n"
    assert notes.checkpoint_text(NAME, size, ROOT) == body
    signature = private.sign(body.encode())  # Ed25519 is deterministic
    assert note == f"{body}\n\u2014 {NAME} {b64(key_id + signature)}\n"

    # Read back the other way: split the note and check its signature independently.
    head, sep, line = note.rpartition("\n\n")
    assert sep and head + "\n" == body
    dash, key_name, blob = line.rstrip("\n").split(" ")
    assert (dash, key_name) == (EM_DASH, NAME)
    raw = base64.b64decode(blob, validate=True)
    assert len(raw) == 68 and raw[:4] == key_id
    Ed25519PublicKey.from_public_bytes(public).verify(raw[4:], body.encode("utf-8"))


def test_sign_appends_a_blank_line_and_one_signature_line(signer: notes.Signer) -> None:
    text = "any text\nof two lines\n"
    signature = fixed_key(CLEAN_SEED).sign(text.encode())
    assert signer.sign(text) == f"{text}\n{EM_DASH} {NAME} {b64(signer.key_id + signature)}\n"


@pytest.mark.parametrize("size", [0, 1, 7, 4097, 10**18])
def test_a_checkpoint_round_trips(signer: notes.Signer, verifier: notes.Verifier,
                                  size: int) -> None:
    note = signer.checkpoint(size, ROOT)
    assert verifier.open(note) == notes.checkpoint_text(NAME, size, ROOT)
    checkpoint = verifier.checkpoint(note)
    assert checkpoint == notes.Checkpoint(NAME, size, ROOT, note)
    assert checkpoint.root_b64 == b64(ROOT)
    assert signer.verifier().checkpoint(note) == checkpoint


def test_the_seeds_give_keys_with_and_without_a_plus() -> None:
    plus = {seed for seed in range(16)
            if "+" in key_part(expected_vkey(NAME, raw_public(fixed_key(seed))))}
    assert CLEAN_SEED not in plus and 0 < len(plus) < 16


@pytest.mark.parametrize("seed", range(16))
def test_every_key_verifies_its_own_checkpoints(seed: int) -> None:
    """About half of all keys have a '+' in their verifier key's base64 (the
    standard alphabet has it); the key's name and id hold none, so the verifier key
    splits at its first two '+' only. Seeds 0 to 15 include both kinds."""
    signer = notes.Signer(fixed_key(seed), NAME)
    assert signer.verifier_key == expected_vkey(NAME, raw_public(fixed_key(seed)))
    note = signer.checkpoint(42, ROOT)
    assert notes.Verifier(signer.verifier_key).checkpoint(note).size == 42
    assert signer.verifier().checkpoint(note).root == ROOT


# -- altered and foreign notes ------------------------------------------------------------


def altered(char: str) -> str:
    """Another character of the same kind, so the note stays well-formed where it
    can: a base64 character that differs in its top bit (so the decoded bytes do
    differ), another digit, or an 'x'."""
    if char.isdigit():
        return str((int(char) + 1) % 10)
    if char in B64:
        return B64[(B64.index(char) + 32) % 64]
    return "x"


def test_altering_any_single_character_is_detected(signer: notes.Signer,
                                                   verifier: notes.Verifier) -> None:
    note = signer.checkpoint(1234, ROOT)
    verifier.checkpoint(note)
    for at, char in enumerate(note):
        changed = note[:at] + altered(char) + note[at + 1:]
        assert changed != note
        with pytest.raises(notes.NoteError):
            verifier.checkpoint(changed)


@pytest.mark.parametrize("where", ["size", "root", "signature", "key id", "origin"])
def test_altered_fields_are_detected(signer: notes.Signer, verifier: notes.Verifier,
                                     where: str) -> None:
    note = signer.checkpoint(1234, ROOT)
    body, _, line = note.partition("\n\n")
    blob = line.split(" ")[2].rstrip("\n")
    start = {"size": note.index("\n1234\n") + 2, "root": note.index(b64(ROOT)) + 10,
             "signature": note.index(blob) + 40, "key id": note.index(blob) + 2,
             "origin": 3}[where]
    changed = note[:start] + altered(note[start]) + note[start + 1:]
    with pytest.raises(notes.NoteError):
        verifier.checkpoint(changed)


def test_a_valid_signature_over_other_text_is_refused(signer: notes.Signer,
                                                      verifier: notes.Verifier) -> None:
    genuine, other = signer.checkpoint(10, ROOT), signer.checkpoint(11, ROOT)
    spliced = genuine.partition("\n\n")[0] + "\n\n" + other.partition("\n\n")[2]
    with pytest.raises(notes.NoteError, match="does not verify"):
        verifier.checkpoint(spliced)
    other_root = genuine.replace(b64(ROOT), b64(hashlib.sha256(b"other").digest()))
    with pytest.raises(notes.NoteError):
        verifier.checkpoint(other_root)
    with pytest.raises(notes.NoteError):  # a line added to the signed text
        verifier.open(genuine.replace("\n\n", "\nextension\n\n"))


def test_a_note_by_another_key_names_the_missing_signature(signer: notes.Signer,
                                                          verifier: notes.Verifier) -> None:
    for other in (notes.Signer(fixed_key(1), NAME), notes.Signer(fixed_key(1), "other/log")):
        note = other.sign(notes.checkpoint_text(NAME, 5, ROOT))
        expected = f"no signature by {NAME} \\(key id {signer.key_id.hex()}\\)"
        with pytest.raises(notes.NoteError, match=expected):
            verifier.checkpoint(note)
    forged = notes.checkpoint_text(NAME, 5, ROOT) + (
        f"\n{EM_DASH} {NAME} {b64(signer.key_id + bytes(64))}\n")
    with pytest.raises(notes.NoteError, match="does not verify"):
        verifier.checkpoint(forged)


def test_a_cosigned_note_verifies_with_either_key(signer: notes.Signer,
                                                  verifier: notes.Verifier) -> None:
    other = notes.Signer(fixed_key(3), NAME)
    text = notes.checkpoint_text(NAME, 9, ROOT)
    ours, theirs = signer.sign(text), other.sign(text)
    both = text + "\n" + theirs.partition("\n\n")[2] + ours.partition("\n\n")[2]
    assert verifier.checkpoint(both).size == 9
    assert notes.Verifier(expected_vkey(NAME, other.public)).checkpoint(both).size == 9


@pytest.mark.parametrize("note", [
    "", "no blank line\n", f"{NAME}\n1\n{b64(ROOT)}\n\n",
    f"{NAME}\n1\n{b64(ROOT)}\n\n- {NAME} AAAA\n",
    f"{NAME}\n1\n{b64(ROOT)}\r\n\n{EM_DASH} {NAME} AAAA\n",
])
def test_malformed_notes_are_refused(verifier: notes.Verifier, note: str) -> None:
    with pytest.raises(notes.NoteError):
        verifier.checkpoint(note)


def test_a_note_must_end_with_a_newline(signer: notes.Signer,
                                        verifier: notes.Verifier) -> None:
    note = signer.checkpoint(3, ROOT)
    with pytest.raises(notes.NoteError):
        verifier.open(note[:-1])


@pytest.mark.parametrize("char", ["\t", "\r", "\x00", "\x1b"])
def test_signed_text_with_control_characters_is_refused(signer: notes.Signer,
                                                         verifier: notes.Verifier,
                                                         char: str) -> None:
    note = signer.sign(f"{NAME}\n3\n{b64(ROOT)}\nextension{char}\n")
    with pytest.raises(notes.NoteError):
        verifier.open(note)


@pytest.mark.parametrize("text", ["x\n", "a\n\nb\n", "a\n\n", "ünï\ncode\n"])
def test_open_returns_exactly_the_signed_text(signer: notes.Signer,
                                              verifier: notes.Verifier, text: str) -> None:
    """The signature block starts after the note's last blank line (as in C2SP's
    signed-note), so the text may hold blank lines of its own."""
    assert verifier.open(signer.sign(text)) == text


def test_signed_text_that_is_not_a_checkpoint_is_refused(signer: notes.Signer,
                                                         verifier: notes.Verifier) -> None:
    bad_bodies = [
        f"other/log\n1\n{b64(ROOT)}\n",  # another log's checkpoint
        f"{NAME}\n01\n{b64(ROOT)}\n",  # not a canonical number
        f"{NAME}\n-1\n{b64(ROOT)}\n",
        f"{NAME}\n\n{b64(ROOT)}\n",
        f"{NAME}\n1\n{b64(ROOT[:31])}\n",  # not 32 bytes
        f"{NAME}\n1\nnot base64!\n",
        f"{NAME}\n1\n",
    ]
    for body in bad_bodies:
        note = signer.sign(body)
        assert verifier.open(note) == body  # the signature is fine: the text is not
        with pytest.raises(notes.NoteError):
            verifier.checkpoint(note)


# -- malformed verifier keys and signing keys ---------------------------------------------


def malformed_vkeys() -> list[tuple[str, str, str]]:
    public = raw_public(fixed_key(CLEAN_SEED))
    key_id = expected_key_id(NAME, public)
    key = b64(ED25519 + public)
    wrong_id = bytes([key_id[0] ^ 1]) + key_id[1:]
    spaced = "example.com audit"
    return [
        ("wrong id", f"{NAME}+{wrong_id.hex()}+{key}", "key id"),
        ("another name's id", f"{NAME}+{expected_key_id('x', public).hex()}+{key}",
         "key id"),
        ("upper-case id", f"{NAME}+{key_id.hex().upper()}+{key}", "key id"),
        ("short id", f"{NAME}+{key_id.hex()[:6]}+{key}", "key id"),
        ("short key", f"{NAME}+{key_id.hex()}+{b64(ED25519 + public[:31])}", "Ed25519"),
        ("long key", f"{NAME}+{key_id.hex()}+{b64(ED25519 + public + bytes(1))}", "Ed25519"),
        ("no type byte", f"{NAME}+{key_id.hex()}+{b64(public)}", "Ed25519"),
        ("another type", f"{NAME}+{key_id.hex()}+{b64(bytes([2]) + public)}", "Ed25519"),
        ("not base64", f"{NAME}+{key_id.hex()}+{key[:-4]}!!!!", "base64"),
        ("truncated base64", f"{NAME}+{key_id.hex()}+{key[:-1]}", "base64"),
        ("space in name",
         f"{spaced}+{expected_key_id(spaced, public).hex()}+{key}", "name"),
        ("empty name", f"+{expected_key_id('', public).hex()}+{key}", "name"),
        ("two parts", f"{NAME}+{key}", "verifier key"),
    ]


@pytest.mark.parametrize(("what", "vkey", "message"), malformed_vkeys(),
                         ids=[case[0] for case in malformed_vkeys()])
def test_malformed_verifier_keys_are_refused(what: str, vkey: str, message: str) -> None:
    with pytest.raises(notes.NoteError, match=message):
        notes.Verifier(vkey)


def test_the_well_formed_vkey_that_the_malformed_ones_start_from_is_accepted() -> None:
    vkey = expected_vkey(NAME, raw_public(fixed_key(CLEAN_SEED)))
    assert notes.Verifier(vkey).text == vkey


def write_pem(path: Path,
              private: ec.EllipticCurvePrivateKey | ed448.Ed448PrivateKey) -> Path:
    path.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path


def test_a_signing_key_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    for name, private in (("ec", ec.generate_private_key(ec.SECP256R1())),
                          ("ed448", ed448.Ed448PrivateKey.generate())):
        path = write_pem(tmp_path / f"{name}.pem", private)
        with pytest.raises(notes.NoteError, match="not an Ed25519 key"):
            notes.Signer.from_file(path)


def test_unreadable_signing_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(notes.NoteError):
        notes.Signer.from_file(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(notes.NoteError):
        notes.Signer.from_file(garbage)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(fixed_key(5).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(notes.NoteError):
        notes.Signer.from_file(encrypted)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "tab\there", "new\nline"])
def test_bad_log_names_are_refused(name: str) -> None:
    with pytest.raises(notes.NoteError):
        notes.Signer(fixed_key(CLEAN_SEED), name)
    with pytest.raises(notes.NoteError):
        notes.checkpoint_text(name, 1, ROOT)


def test_a_signature_spelled_otherwise_in_base64_is_refused(tmp_path) -> None:
    # The last base64 character of a 68-byte signature carries 2 unused bits: another
    # spelling decodes to the same bytes, and a note must have one text.
    notes.write_new_key(tmp_path / "k.pem")
    signer = notes.Signer.from_file(tmp_path / "k.pem")
    note = signer.checkpoint(3, b"\x07" * 32)
    body, signature = note.rstrip("\n").rsplit(" ", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = signature[-2]  # before the single "=" of 68 bytes
    twin = alphabet[alphabet.index(last) ^ 1]
    altered = f"{body} {signature[:-2]}{twin}=\n"
    with pytest.raises(notes.NoteError, match="canonical"):
        signer.verifier().checkpoint(altered)
    assert signer.verifier().checkpoint(note).size == 3


def test_the_signer_refuses_what_no_verifier_would_accept(tmp_path) -> None:
    notes.write_new_key(tmp_path / "k.pem")
    signer = notes.Signer.from_file(tmp_path / "k.pem")
    for size, root in ((-1, b"\0" * 32), (1, b"\0" * 31), (True, b"\0" * 32)):
        with pytest.raises(ValueError):
            signer.checkpoint(size, root)
    with pytest.raises(ValueError):
        signer.sign("no newline at the end")
