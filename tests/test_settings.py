"""Settings changes start from the stored row, never from a copy read earlier in the request."""

from __future__ import annotations

from app import db, orgs
from app.db import write_transaction
from app.policy import settings as policy_settings
from tests.factories import make_org


def test_a_change_is_applied_to_the_row_as_stored_now(app):
    make_org(app)
    with app.app_context():
        s = db.session()
        org = orgs.by_slug(s, "acme")
        stale = orgs.settings_of(s, org.id)  # e.g. loaded while authenticating
        s.commit()
        other = app.extensions["fremforge.db"].sessions()  # another request changes the policy meanwhile
        with write_transaction(other):
            policy_settings.apply(
                other, orgs.settings_for_update(other, org.id), {"block_action": "block_pull"}, "other"
            )
        other.close()
        assert stale.block_action == "warn"
        with write_transaction(s):
            fresh = orgs.settings_for_update(s, org.id)
            changed = policy_settings.apply(s, fresh, {"block_action": "none"}, "me")
        assert changed == {"block_action": {"old": "block_pull", "new": "none"}}
