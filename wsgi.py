"""The WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi ...`."""

import gc

from app import create_app, metrics_folder

app = create_app()

# Every process started from here (gunicorn's workers, the outbox worker, the other commands) counts its series in
# the host's folder, PROMETHEUS_MULTIPROC_DIR or else the instance folder's `metrics`, so GET /metrics sums them all.
metrics_folder.share(app.instance_path)

# What start-up made (modules, classes, githubkit's models, the app: some 130,000 objects) lives as long as the
# process. Frozen, it is left out of the collector's full passes, which otherwise took 45-100 ms each in a
# gunicorn worker (every request queued on that worker waits the pause out); with it frozen they take about 2 ms.
gc.collect()
gc.freeze()
