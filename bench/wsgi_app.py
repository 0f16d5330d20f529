"""The service's WSGI app for another server to run (`bench/http.py --server granian`).

    DEFICIENCY_CONFIG=config.yaml PYTHONPATH=. granian --interface wsgi bench.wsgi_app:app

`app` is `create_app(load_config())` of the `service` package on the path, configured
as `deficiency serve` is (the file named by DEFICIENCY_CONFIG, then DEFICIENCY_*
variables). Each worker process imports this module and builds its own app. Set
PROMETHEUS_MULTIPROC_DIR before the server starts for /metrics over all workers.
A benchmark aid, not a way to run the service.
"""

from service.api.app import create_app
from service.config import load_config

app = create_app(load_config())
