from tests.factories import make_org, make_token, post, seed


def test_upload_roundtrip(app, client):
    make_org(app)
    token = make_token(app)
    r = post(client, token, seed())
    assert r.status_code == 202, r.json
    assert r.json["accepted"] == 1
