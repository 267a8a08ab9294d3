"""Signed checkpoints: what they hold and how they are signed, refusing to sign a chain that does not extend the
last one, and `chain verify --checkpoint` finding a cut tail, a rebuilt chain and a foreign signature."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.chain import checkpoints, verify
from app.models import utcnow
from tests.chainkit import build_chain, org_id, scalar, sql, verdict
from tests.factories import finding, make_org, make_token, post, seed

SIZE = 200
DOMAIN = {"finding": b"fremforge/finding/v1\n", "audit": b"fremforge/audit/v1\n"}


def signed_message(doc: dict) -> bytes:
    """As the README documents it, written out independently of app.chain.checkpoints."""
    statement = {k: doc[k] for k in ("org", "size", "head_hash", "time")}
    return b"fremforge/checkpoint/v1\n" + json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def get_checkpoint(client, token: str, slug: str = "acme"):
    return client.get(f"/api/v1/orgs/{slug}/audit/checkpoint", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def signed(app, client, tmp_path):
    """acme's 200-entry chain, a checkpoint of it saved to a file, and acme's token."""
    token = build_chain(app, client, size=SIZE, per_upload=50)
    answer = get_checkpoint(client, token)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    path = tmp_path / "checkpoints.jsonl"
    path.write_text(json.dumps(answer.json) + "\n")
    return token, answer.json, path


def test_a_checkpoint_states_the_chain_and_verifies_with_its_public_key(app, signed):
    _, doc, _ = signed
    assert doc["org"] == "acme" and doc["size"] == SIZE
    assert doc["head_hash"] == scalar(app, "SELECT head_hash FROM chain_heads")
    public = base64.b64decode(doc["public_key"])
    assert doc["key_id"] == "ed25519:" + hashlib.sha256(public).hexdigest()[:16]
    Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(doc["signature"]), signed_message(doc))


def test_the_same_state_gives_the_same_checkpoint_and_growth_a_new_one(app, client, signed):
    token, doc, _ = signed
    assert get_checkpoint(client, token).json == doc
    assert post(client, token, seed([finding("CVE-2030-0001")], image_ref="ghcr.io/acme/more:1")).status_code == 202
    later = get_checkpoint(client, token).json
    assert later["size"] == SIZE + 1 and later["head_hash"] != doc["head_hash"]
    assert scalar(app, "SELECT count(*) FROM chain_checkpoints") == 2


def test_the_chain_verifies_against_its_checkpoints(app, client, signed):
    token, _, path = signed
    assert post(client, token, seed([finding("CVE-2030-0001")], image_ref="ghcr.io/acme/more:1")).status_code == 202
    with path.open("a") as fh:  # a file of several checkpoints (JSON lines), as a cron job would keep
        fh.write(json.dumps(get_checkpoint(client, token).json) + "\n")
    code, v = verdict(app, "acme", "--checkpoint", str(path))
    assert (code, v["intact"], v["checkpoints"]) == (0, True, 2)


def test_a_tail_cut_by_ten_fails_against_the_last_checkpoint(app, client, signed):
    token, _, path = signed
    acme = org_id(app, "acme")
    # Cut the last 10 entries and move the head back, so the chain is consistent in itself.
    sql(
        app,
        f"DELETE FROM findings WHERE org_id = :org AND seq > {SIZE - 10}",
        "UPDATE chain_heads SET seq = :n,"
        " head_hash = (SELECT chain_hash FROM findings WHERE org_id = :org AND seq = :n) WHERE org_id = :org",
        org=acme,
        n=SIZE - 10,
    )
    assert verdict(app)[0] == 0  # the chain alone cannot tell
    code, v = verdict(app, "acme", "--checkpoint", str(path))
    assert (code, v["fault"], v["first_bad_seq"]) == (1, "checkpoint_truncated", SIZE - 9), v["message"]
    refused = get_checkpoint(client, token)
    assert refused.status_code == 409 and refused.json["error"] == "checkpoint_inconsistent"


def test_a_rebuilt_chain_fails_against_the_last_checkpoint(app, client, signed):
    token, _, path = signed
    acme = org_id(app, "acme")
    sql(app, "UPDATE findings SET severity = 'low' WHERE org_id = :org AND seq = 100", org=acme)
    rebuild(app, acme)
    assert verdict(app)[0] == 0  # every hash recomputed: the chain alone cannot tell
    code, v = verdict(app, "acme", "--checkpoint", str(path))
    assert (code, v["fault"], v["first_bad_seq"]) == (1, "checkpoint_mismatch", SIZE), v["message"]
    assert get_checkpoint(client, token).status_code == 409


def test_a_checkpoint_signed_with_another_key_fails(app, signed, tmp_path):
    _, doc, _ = signed
    other = Ed25519PrivateKey.generate()
    forged = {**doc, "signature": base64.b64encode(other.sign(signed_message(doc))).decode()}
    raw = other.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    forged["public_key"] = base64.b64encode(raw).decode()
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    code, v = verdict(app, "acme", "--checkpoint", str(path))
    assert (code, v["fault"]) == (1, "checkpoint_signature"), v["message"]
    assert "checkpoint rejected" in v["message"] and "seq None" not in v["message"]

    changed = {**doc, "size": SIZE - 1}  # an edited checkpoint: the signature no longer covers it
    path.write_text(json.dumps(changed))
    assert verdict(app, "acme", "--checkpoint", str(path))[1]["fault"] == "checkpoint_signature"


def test_a_host_with_another_key_signs_nothing_until_the_key_is_replaced_on_purpose(app, client, signed, tmp_path):
    """A second host not given the deployment's key file made a key of its own and signed with it: checkpoints of
    two keys, and `chain verify --checkpoint` on either host called the other's tampering (review). Now a host
    without the file makes none once the deployment has a checkpoint (503 checkpoint_key_unavailable), and one with
    another key signs nothing, for any org, even one without checkpoints yet (409 checkpoint_key_changed, logged);
    `chain checkpoint --new-key` signs with a key replaced on purpose, and from then on that key is the deployment's."""
    token, doc, _ = signed
    assert post(client, token, seed([finding("CVE-2030-0002")], image_ref="ghcr.io/acme/more:2")).status_code == 202
    app.extensions.pop("fremforge.checkpoint_key")
    missing = tmp_path / "other-host" / "checkpoint.pem"
    app.config["CHECKPOINT_KEY_FILE"] = str(missing)
    unavailable = get_checkpoint(client, token)
    assert unavailable.status_code == 503 and unavailable.json["error"] == "checkpoint_key_unavailable"
    assert not missing.exists()  # no key of its own made
    result = app.test_cli_runner().invoke(args=["chain", "checkpoint", "acme"])  # nor by the command
    assert result.exit_code == 1 and "the deployment's key file" in result.output and not missing.exists()

    own = tmp_path / "own.pem"  # the other host's own key
    own.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    app.config["CHECKPOINT_KEY_FILE"] = str(own)
    refused = get_checkpoint(client, token)
    assert refused.status_code == 409 and refused.json["error"] == "checkpoint_key_changed", refused.json
    assert doc["key_id"] in refused.json["message"] and "--new-key" in refused.json["message"]
    make_org(app, "beta")  # an org without checkpoints: no key of another host's either
    other = get_checkpoint(client, make_token(app, "beta"), "beta")
    assert other.status_code == 409 and other.json["error"] == "checkpoint_key_changed"
    runner = app.test_cli_runner()
    result = runner.invoke(args=["chain", "checkpoint", "acme"])
    assert result.exit_code == 1 and "--new-key" in result.output, result.output
    assert scalar(app, "SELECT count(*) FROM chain_checkpoints") == 1
    result = runner.invoke(args=["chain", "checkpoint", "acme", "--new-key"])
    assert result.exit_code == 0, result.output
    rotated = json.loads(result.output)
    assert rotated["key_id"] != doc["key_id"] and rotated["size"] == SIZE + 1
    assert get_checkpoint(client, token).json == rotated  # the new key is the deployment's now
    assert get_checkpoint(client, make_token(app, "beta"), "beta").json["key_id"] == rotated["key_id"]


def test_the_api_verifies_against_posted_checkpoints(app, client, signed):
    _, doc, path = signed
    admin = make_token(app, scopes=["settings:write"])
    auth = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    ok = client.post("/api/v1/orgs/acme/audit/verify", data=path.read_bytes(), headers=auth)
    assert ok.status_code == 200 and ok.json["intact"] and ok.json["checkpoints"] == 1
    bad = client.post("/api/v1/orgs/acme/audit/verify", data=b"{not json", headers=auth)
    assert bad.status_code == 422 and bad.json["error"] == "validation_failed"
    wrong = client.post("/api/v1/orgs/acme/audit/verify", data=json.dumps({**doc, "size": 5}), headers=auth)
    assert wrong.status_code == 200 and wrong.json["fault"] == "checkpoint_signature"


def test_a_bad_checkpoint_file_is_a_usage_error(app, signed, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"org": "acme"}')
    result = app.test_cli_runner().invoke(args=["chain", "verify", "acme", "--checkpoint", str(path)])
    assert result.exit_code == 2 and "--checkpoint" in result.output


def test_the_key_is_made_once_in_the_instance_folder(app, signed):
    key = Path(app.instance_path) / "checkpoint_ed25519.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()


def test_the_key_file_setting_is_honoured(make_app, tmp_path):
    path = tmp_path / "keys" / "fremforge-checkpoint.pem"
    app = make_app(CHECKPOINT_KEY_FILE=path)
    with app.app_context():
        made = checkpoints.key_of(app)
    assert path.exists() and checkpoints.load_or_create(path).public_raw == made.public_raw


def rebuild(app, org: int) -> None:
    """Recompute every hash of the org's chain from its (altered) payloads, as a forger with the database would."""
    engine = app.extensions["fremforge.db"].engine
    with app.app_context(), verify.snapshot(engine) as conn, verify.entries(conn, org) as chain:
        rows = list(chain)
    prev, updates = bytes(32), []
    for _seq, kind, row_id, payload, _, _ in rows:
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ph = hashlib.sha256(DOMAIN[kind] + canonical).digest()
        prev = hashlib.sha256(prev + ph).digest()
        updates.append((kind, row_id, ph.hex(), prev.hex()))
    statements = []
    for kind, row_id, ph, ch in updates:
        table = "findings" if kind == "finding" else "audit_events"
        statements.append(f"UPDATE {table} SET payload_hash = '{ph}', chain_hash = '{ch}' WHERE id = {row_id}")
    statements.append(f"UPDATE chain_heads SET head_hash = '{prev.hex()}' WHERE org_id = {org}")
    sql(app, *statements)


def test_any_token_of_the_org_may_fetch_a_checkpoint_and_no_other(app, client, signed):
    _, doc, _ = signed
    uploader = make_token(app, scopes=["findings:write"])  # e.g. the workflow, right after its upload
    later = get_checkpoint(client, uploader).json
    assert later["size"] == doc["size"] + 1  # + token.created
    assert later["key_id"] == doc["key_id"]
    assert client.get("/api/v1/orgs/acme/audit/checkpoint").status_code == 401


def test_checking_needs_the_key_and_never_makes_one(app, client, signed, tmp_path, caplog):
    token, _, path = signed
    admin = make_token(app, scopes=["settings:write"])
    missing = tmp_path / "elsewhere" / "missing.pem"
    app.config["CHECKPOINT_KEY_FILE"] = missing
    app.extensions.pop("fremforge.checkpoint_key", None)

    assert verdict(app)[0] == 0  # plain verification needs no key
    result = app.test_cli_runner().invoke(args=["chain", "verify", "acme", "--checkpoint", str(path)])
    assert result.exit_code == 2 and "there is no checkpoint key at" in result.output
    answer = client.post(
        "/api/v1/orgs/acme/audit/verify", data=path.read_bytes(), headers={"Authorization": f"Bearer {admin}"}
    )
    assert answer.status_code == 503 and answer.json["error"] == "checkpoint_key_unavailable"
    assert str(tmp_path) not in answer.json["message"]  # an org's token learns no file of the server's
    assert not missing.exists()

    missing.parent.mkdir()
    missing.write_text("not a key")
    with caplog.at_level(logging.ERROR, logger="app.chain.api"):
        refused = get_checkpoint(client, token)
    assert refused.status_code == 503 and refused.json["error"] == "checkpoint_key_unavailable", refused.json
    assert str(tmp_path) not in refused.json["message"], refused.json
    assert "cannot be read" in caplog.text and str(missing) in caplog.text  # the operator's log says which and why


def new_key() -> checkpoints.Key:
    private = Ed25519PrivateKey.generate()
    return checkpoints.Key(
        private, private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def test_two_hosts_signing_first_checkpoints_at_once_agree_on_one_key() -> None:
    """PostgreSQL: two hosts, each with a key of its own, signing the first checkpoints of two orgs at once both
    saw no checkpoint and both signed (review): the deployment's key is read under an advisory lock, so the second
    waits for the first and then signs nothing (KeyChanged). SQLite's one writer serialises them already."""
    from app import create_app, db, migrate
    from app.db import write_transaction
    from tests.conftest import TEST_CONFIG
    from tests.test_migrations import empty_postgresql_schema

    with empty_postgresql_schema() as url:
        app = create_app({**TEST_CONFIG, "DATABASE_URL": url})
        migrate.upgrade(app)
        ids = [make_org(app, slug).id for slug in ("one", "two")]
        first_key, second_key = new_key(), new_key()
        outcome: list[str] = []

        def second_host() -> None:
            with app.app_context():
                session = db.session()
                try:
                    with write_transaction(session):
                        checkpoints.issue(session, second_key, ids[1], "two", utcnow())
                    outcome.append("signed")
                except checkpoints.KeyChanged:
                    outcome.append("refused")

        with app.app_context():
            session = db.session()
            with write_transaction(session):
                checkpoints.issue(session, first_key, ids[0], "one", utcnow())  # holds the lock until it commits
                other = threading.Thread(target=second_host)
                other.start()
                deadline = time.monotonic() + 30
                while not scalar(app, WAITING_FOR_THE_KEY_LOCK):  # the second host waits for the lock
                    assert other.is_alive() and time.monotonic() < deadline, outcome
                    time.sleep(0.01)  # polling pg_locks
            other.join(30)
        assert outcome == ["refused"]
        assert scalar(app, "SELECT count(DISTINCT key_id) FROM chain_checkpoints") == 1
        app.extensions["fremforge.db"].engine.dispose()


WAITING_FOR_THE_KEY_LOCK = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
    f"AND classid = {checkpoints.KEY_LOCK_CLASS}"
)
