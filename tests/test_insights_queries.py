"""Insights queries (app.insights): images and their latest scans, the advisory search over latest scans only
(ids and vendor ids, letter case, prefixes, paging, other orgs never), and the trend's day-by-day running counts."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app import db
from app.findings import service
from app.insights import advisories, images, trend
from app.insights import index as index_module
from tests.factories import finding, make_org, make_token, stored_scan


@pytest.fixture
def tokens(app) -> dict[str, str]:
    make_org(app, "acme")
    make_org(app, "other")
    return {slug: make_token(app, slug, ["findings:write", "findings:read"]) for slug in ("acme", "other")}


upload = stored_scan  # the scan id of an upload that must be stored


def org_id(app: Any, slug: str) -> int:
    from app.models import Org

    with app.app_context():
        return int(db.session().scalar(sa.select(Org.id).where(Org.slug == slug)))


def search(app: Any, slug: str, q: str, after: int | None = None, limit: int = 50) -> tuple[list[Any], int | None]:
    with app.app_context():
        return advisories.search(db.session(), org_id(app, slug), advisories.parse(q), after, limit)


def test_each_image_keeps_its_latest_scan(app, client, tokens):
    t = tokens["acme"]
    a1 = upload(client, t, image_ref="ghcr.io/acme/api:1")
    b1 = upload(client, t, image_ref="ghcr.io/acme/web:1")
    a2 = upload(client, t, image_ref="ghcr.io/acme/api:2", sha="b" * 40)
    other = upload(client, t, image_ref="ghcr.io/acme/api:3", repo="acme/other")
    with app.app_context():
        rows, more = images.images_now(db.session(), org_id(app, "acme"))
    assert more is None
    assert [(r.repo_full_name, r.image_name, r.scan.id) for r in rows] == [
        ("acme/api", "ghcr.io/acme/api", a2),
        ("acme/api", "ghcr.io/acme/web", b1),
        ("acme/other", "ghcr.io/acme/api", other),
    ]
    assert a1 not in [r.scan.id for r in rows]


def test_search_finds_ids_and_vendor_ids_in_latest_scans_only(app, client, tokens):
    t = tokens["acme"]
    log4j = finding("CVE-2021-44228", "critical", "log4j-core", "2.14.1", "2.15.0")
    vendor = finding("DSA-5000-1", "high", "openssl", "1.1", "1.2", vendor_ids=["CVE-2021-44228"])
    upload(client, t, image_ref="ghcr.io/acme/api:1", findings=[log4j])
    upload(client, t, image_ref="ghcr.io/acme/api:2", findings=[finding()])  # fixed: drops out
    upload(client, t, image_ref="ghcr.io/acme/web:1", findings=[vendor, finding()])
    upload(client, tokens["other"], slug="other", repo="other/api", findings=[log4j])
    hits, more = search(app, "acme", "cve-2021-44228")
    assert more is None
    assert [(h.image_name, h.cve_id, h.matched_as) for h in hits] == [("ghcr.io/acme/web", "DSA-5000-1", "vendor id")]
    other, _ = search(app, "other", "CVE-2021-44228")
    assert [(h.image_name, h.matched_as, h.package) for h in other] == [("ghcr.io/acme/api", "id", "log4j-core")]


def test_prefix_search_and_paging(app, client, tokens):
    t = tokens["acme"]
    for i in range(5):
        upload(client, t, image_ref=f"ghcr.io/acme/img{i}:1", findings=[finding(f"CVE-2024-{1000 + i}")])
    upload(client, t, image_ref="ghcr.io/acme/old:1", findings=[finding("CVE-2023-1")])
    seen, after = [], None
    while True:
        page, after = search(app, "acme", "cve-2024-*", after, limit=2)
        seen += [h.cve_id for h in page]
        if after is None:
            break
    assert sorted(seen) == [f"CVE-2024-{1000 + i}" for i in range(5)]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("q", ["", "*", "C*", "CVE 2021", "CVE-2021-44228%", "x" * 201, "%", "_VE-2021-44228"])
def test_bad_queries_are_refused(q):
    with pytest.raises(advisories.BadQuery):
        advisories.parse(q)


def test_like_wildcards_in_a_query_match_only_themselves(app, client, tokens):
    upload(client, tokens["acme"], findings=[finding("GO-2022-0001")])
    assert search(app, "acme", "GO-2022-0001")[0]
    assert not search(app, "acme", "GO_2022-0001")[0]


def at_day(monkeypatch: Any, day: date, hour: int = 12) -> None:
    """Uploads from now on are stored as made at `hour` on `day` (the ingest's clock)."""
    monkeypatch.setattr(service, "utcnow", lambda: datetime.combine(day, datetime.min.time()) + timedelta(hours=hour))


def criticals(n: int) -> list[dict[str, Any]]:
    return [finding(f"CVE-2020-{i}", "critical") for i in range(n)]


def test_the_trend_carries_each_images_latest_counts_forward(app, client, tokens, monkeypatch):
    t = tokens["acme"]
    today = date(2026, 12, 5)
    plan = [  # (days ago, hour, image, criticals)
        (120, 1, "api", 5),  # before the window: the starting point
        (30, 1, "api", 2),
        (30, 2, "web", 1),
        (10, 1, "api", 4),
        (10, 2, "api", 3),  # the day's last scan counts
        (0, 1, "web", 0),
    ]
    for ago, hour, name, n in plan:
        at_day(monkeypatch, today - timedelta(days=ago), hour)
        upload(client, t, image_ref=f"ghcr.io/acme/{name}:1", findings=criticals(n))
    with app.app_context():
        session = db.session()
        days = trend.trend(session, org_id(app, "acme"), today)
        api = trend.trend(session, org_id(app, "acme"), today, ("acme/api", "ghcr.io/acme/api"))
        now, _ = images.images_now(session, org_id(app, "acme"))
    assert len(days) == 90 and days[-1].day == today and days[0].day == today - timedelta(days=89)
    by_day = {d.day: d.critical for d in days}
    assert by_day[today - timedelta(days=89)] == 5
    assert by_day[today - timedelta(days=31)] == 5
    assert by_day[today - timedelta(days=30)] == 3
    assert by_day[today - timedelta(days=10)] == 4
    assert by_day[today - timedelta(days=1)] == 4
    assert by_day[today] == 3 == sum(i.scan.critical for i in now)
    assert [d.critical for d in api][-1] == 3 and api[0].critical == 5


def test_the_org_trend_is_the_sum_of_its_images_trends_and_of_a_model(app, client, tokens, monkeypatch):
    """Random uploads over 40 days to four images (some days several, some none): each day of the org's trend is
    what a model of "each image's last scan up to that day" says, and the sum of the images' own trends."""
    rng = random.Random(17)
    today = date(2026, 12, 5)
    names = ["api", "web", "worker", "db"]
    latest: dict[str, tuple[int, int, int, int]] = {}
    model: dict[date, tuple[int, ...]] = {}
    for ago in range(40, -1, -1):
        day = today - timedelta(days=ago)
        for hour in sorted(rng.sample(range(1, 23), rng.choice([0, 0, 1, 2, 3]))):
            name = rng.choice(names)
            counts = tuple(rng.randint(0, 3) for _ in range(4))
            findings = [
                finding(f"CVE-2021-{level}{i}", severity)
                for level, (severity, n) in enumerate(zip(trend.LEVELS, counts, strict=True))
                for i in range(n)
            ]
            at_day(monkeypatch, day, hour)
            upload(client, tokens["acme"], image_ref=f"ghcr.io/acme/{name}:{ago}", findings=findings)
            latest[name] = counts  # type: ignore[assignment]
        model[day] = tuple(sum(c[i] for c in latest.values()) for i in range(4))
    with app.app_context():
        session = db.session()
        org = trend.trend(session, org_id(app, "acme"), today, days=30)
        per_image = [
            trend.trend(session, org_id(app, "acme"), today, ("acme/api", f"ghcr.io/acme/{n}"), 30) for n in names
        ]
    assert [d.counts for d in org] == [model[d.day] for d in org]
    summed = [tuple(sum(img[i].counts[j] for img in per_image) for j in range(4)) for i in range(30)]
    assert summed == [d.counts for d in org]


def index_rows(app: Any) -> list[tuple[str, int]]:
    from app.models import LatestAdvisory

    with app.app_context():
        rows = db.session().execute(sa.select(LatestAdvisory.advisory_id, LatestAdvisory.scan_run_id)).all()
    return sorted((a, s) for a, s in rows)


def index(app: Any, images_at_most: int | None = None, monkeypatch: Any = None) -> int:
    """The worker's indexing round; with `images_at_most`, one batch of that many images only."""
    if images_at_most is not None:
        monkeypatch.setattr(index_module, "UNINDEXED", index_module.UNINDEXED.limit(images_at_most))
    with app.app_context():
        return index_module.index_advisories(db.session())


def test_the_worker_indexes_latest_scans_and_prunes_replaced_ones(app, client, tokens):
    """Uploads add no index rows; the worker adds each image's latest scan's advisory ids (own and vendor ids, upper
    case, once a finding) and later prunes the rows of the scans replaced since. The search answers alike all along:
    a latest scan not indexed yet is read from its findings."""
    t = tokens["acme"]
    old = upload(client, t, findings=[finding("cve-2021-1", vendor_ids=["DSA-1-1", "CVE-2021-1", "dsa-1-1"])])
    assert index_rows(app) == []
    assert [h.scan_run_id for h in search(app, "acme", "DSA-1-1")[0]] == [old]
    assert index(app) == 1
    assert index_rows(app) == sorted([("CVE-2021-1", old), ("DSA-1-1", old)])
    assert index(app) == 0
    new = upload(client, t, sha="b" * 40, findings=[finding("CVE-2021-2")])
    other = upload(client, t, image_ref="ghcr.io/acme/web:1", findings=[finding("CVE-2021-1")])
    for _ in range(2):  # before the worker's round, and after
        assert [h.scan_run_id for h in search(app, "acme", "CVE-2021-1")[0]] == [other]
        assert search(app, "acme", "DSA-1-1")[0] == []
        assert [h.scan_run_id for h in search(app, "acme", "cve-2021-2")[0]] == [new]
        assert index(app) in (2, 0)
    assert index_rows(app) == sorted(
        [("CVE-2021-1", old), ("DSA-1-1", old), ("CVE-2021-2", new), ("CVE-2021-1", other)]
    )
    with app.app_context():
        assert index_module.prune_advisories(db.session()) == 2
        assert index_module.prune_advisories(db.session()) == 0
    assert index_rows(app) == sorted([("CVE-2021-2", new), ("CVE-2021-1", other)])
    assert [h.scan_run_id for h in search(app, "acme", "CVE-2021-1")[0]] == [other]


def all_hits(app: Any, q: str, limit: int) -> list[tuple[str, int, str]]:
    """Every page of a search: (advisory id matched, finding id, how) a hit, in the order given."""
    hits, after = [], None
    while True:
        page, after = search(app, "acme", q, after, limit)
        hits += [(h.cve_id, h.finding_id, h.matched_as) for h in page]
        if after is None:
            return hits


def test_the_search_answers_alike_before_during_and_after_the_worker_indexes(app, client, tokens, monkeypatch):
    """Images whose latest scans are indexed, not yet indexed, or replaced since: every query, at every page size,
    gives the same hits in the same order (a finding once for each of its ids the query takes)."""
    rng = random.Random(7)
    t = tokens["acme"]
    ids = [f"CVE-2024-{n:04d}" for n in range(12)] + ["GHSA-aaaa-bbbb-cccc", "DSA-5000-1"]
    for round_ in range(3):
        for i in range(6):
            picked = rng.sample(ids, 5)
            findings = [
                finding(a.lower() if rng.random() < 0.3 else a, vendor_ids=rng.sample(ids, rng.randint(0, 2)))
                for a in picked
            ]
            upload(client, t, image_ref=f"ghcr.io/acme/img{i}:{round_}", sha=f"{round_}{i}" * 20, findings=findings)
        if round_ == 1:
            index(app)  # the first two rounds' latest scans indexed; the third round's replace them unindexed
    queries = ["CVE-2024-0003", "cve-2024-00*", "GHSA-aaaa-bbbb-cccc", "DSA-5000-1", "CVE-2024-*", "CVE-1999-1"]
    before = {(q, limit): all_hits(app, q, limit) for q in queries for limit in (1, 2, 3, 1000)}
    assert len(before[("CVE-2024-*", 1000)]) > 20, "the history has hits"
    for (q, limit), hits in before.items():
        assert hits == before[(q, 1000)], (q, limit)
    index(app, images_at_most=2, monkeypatch=monkeypatch)  # the worker part way through
    assert {key: all_hits(app, *key) for key in before} == before
    monkeypatch.undo()
    assert index(app) == 4
    assert {key: all_hits(app, *key) for key in before} == before
    with app.app_context():
        index_module.prune_advisories(db.session())
    assert {key: all_hits(app, *key) for key in before} == before
    with app.app_context():  # every latest scan read from its findings, their index rows there or not: each hit once
        from app.models import Image

        db.session().execute(sa.update(Image).values(indexed_scan_id=None))
        db.session().commit()
    assert {key: all_hits(app, *key) for key in before} == before


def test_the_worker_prunes_the_search_index(app, client, tokens):
    from app.worker import Loop

    t = tokens["acme"]
    upload(client, t, findings=[finding("CVE-2021-1")])
    new = upload(client, t, sha="b" * 40, findings=[finding("CVE-2021-2")])
    with app.app_context():
        Loop(gh=None, once=True).run()
    assert index_rows(app) == [("CVE-2021-2", new)]


@pytest.mark.parametrize("stored", [None, "DSA-1-1"], ids=["json-null", "json-string"])
def test_vendor_ids_stored_as_no_array_do_not_break_the_search_or_the_index(app, client, tokens, stored):
    """vendor_ids is a JSON array as uploads store it; a JSON null or scalar written some other way (SQLAlchemy writes
    None as JSON null) gives no vendor id, read from the findings or from the index, and no error."""
    from app.models import Finding

    scan = upload(client, tokens["acme"], findings=[finding("CVE-2021-1", vendor_ids=["DSA-9-9"])])
    with app.app_context():
        db.session().execute(sa.update(Finding).values(vendor_ids=stored))
        db.session().commit()
    assert [h.scan_run_id for h in search(app, "acme", "CVE-2021-1")[0]] == [scan]
    assert search(app, "acme", "DSA-9-9")[0] == []
    assert index(app) == 1
    assert ("CVE-2021-1", scan) in index_rows(app)
    assert [h.scan_run_id for h in search(app, "acme", "CVE-2021-1")[0]] == [scan]
