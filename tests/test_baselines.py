"""Finding a scan's baseline (spec section 3): the newest scan of the same repository and image name built from the
pull request's base branch, else at its base commit; what a finding is the same as in it by. Not yet used by ingest
(issue 14 goes on); one indexed probe each."""

from __future__ import annotations

from typing import Any

import pytest

from app import commits, db, orgs
from app.models import PullRequestLink, utcnow
from tests.factories import finding, make_org, make_token, post, seed

HEAD = "a" * 40
BASE = "b" * 40
REPO = "acme/api"


@pytest.fixture
def acme(app, client) -> tuple[Any, str]:
    make_org(app)
    return client, make_token(app)


def upload(acme: tuple[Any, str], image: str, sha: str, ref: str | None = None, repo: str = REPO, findings=None) -> int:
    client, token = acme
    body = seed(findings or [finding()], image_ref=image, sha=sha, repo=repo, **({"ref": ref} if ref else {}))
    r = post(client, token, body)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["scan_run_id"]


def open_pr(app: Any, base_ref: str | None = "refs/heads/main", base_sha: str | None = BASE, head: str = HEAD) -> None:
    with app.app_context():
        s = db.session()
        org = orgs.by_slug(s, "acme")
        assert org is not None
        s.add(
            PullRequestLink(
                org_id=org.id,
                repo_full_name=REPO,
                number=4,
                head_sha=head,
                base_ref=base_ref,
                base_sha=base_sha,
                state="open",
                updated_at=utcnow(),
            )
        )
        s.commit()


def baseline_of(app: Any, image_name: str, repo: str = REPO) -> int | None:
    with app.app_context():
        conn = db.session().connection()
        org = orgs.by_slug(db.session(), "acme")
        assert org is not None
        base = commits.pr_base(conn, org.id, repo, HEAD)
        if base is None:
            return None
        return commits.baseline_or_why(conn, org.id, repo, image_name, *base)[0]


def test_the_newest_scan_of_the_image_built_from_the_base_branch(app, acme):
    upload(acme, "ghcr.io/acme/api:old", "1" * 40, "refs/heads/main")
    newest = upload(acme, "ghcr.io/acme/api:main@sha256:00ff", "2" * 40, "refs/heads/main")
    upload(acme, "ghcr.io/acme/worker:main", "3" * 40, "refs/heads/main")  # another image name
    upload(acme, "ghcr.io/acme/api:feature", "4" * 40, "refs/heads/feature")  # another branch
    upload(acme, "ghcr.io/acme/api:main", "5" * 40, "refs/heads/main", repo="acme/other")  # another repository
    open_pr(app)
    assert baseline_of(app, "ghcr.io/acme/api") == newest


def test_else_the_newest_scan_of_the_image_at_the_base_commit(app, acme):
    at_base = upload(acme, "ghcr.io/acme/api:1", BASE)  # no ref sent
    upload(acme, "ghcr.io/acme/worker:1", BASE)
    open_pr(app)
    assert baseline_of(app, "ghcr.io/acme/api") == at_base


def test_no_baseline_without_a_pr_or_without_a_scan_of_the_base(app, acme):
    upload(acme, "ghcr.io/acme/api:1", "9" * 40, "refs/heads/main")
    assert baseline_of(app, "ghcr.io/acme/api") is None  # no PR known for the head
    open_pr(app, base_ref="refs/heads/develop", base_sha="c" * 40)
    assert baseline_of(app, "ghcr.io/acme/api") is None  # nothing built from the base
    assert baseline_of(app, "ghcr.io/acme/worker") is None


def test_a_pr_whose_base_is_unknown_has_no_baseline(app, acme):
    upload(acme, "ghcr.io/acme/api:1", BASE, "refs/heads/main")
    open_pr(app, base_ref=None, base_sha=None)
    assert baseline_of(app, "ghcr.io/acme/api") is None


def test_a_finding_is_the_same_by_advisory_and_package(app, acme):
    scan = upload(
        acme,
        "ghcr.io/acme/api:1",
        BASE,
        findings=[finding("CVE-1", package="openssl"), finding("CVE-1", package="libssl3"), finding("CVE-2")],
    )
    with app.app_context():
        keys = commits.baseline_keys(db.session().connection(), scan)
    assert keys == {("CVE-1", "openssl"), ("CVE-1", "libssl3"), ("CVE-2", "openssl")}
