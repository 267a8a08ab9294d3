from app import create_app


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["database"] == "ok"


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "x",
            "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1",
        }
    )
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and r.json["database"] == "unreachable"
    assert app.test_client().get("/healthz").status_code == 200


def test_readyz_is_503_on_a_database_that_was_never_migrated(tmp_path):
    app = create_app({"TESTING": True, "SECRET_KEY": "x", "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"})
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and "db upgrade" in r.json["database"]
