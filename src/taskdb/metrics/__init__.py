"""`taskdb metrics`: the queue's health for Prometheus (README, "Monitoring").

- :mod:`taskdb.metrics.collector`: the metrics (:data:`METRICS`, a public contract), the one query per scrape
  (``collector.sql``) and the ``prometheus_client`` collector;
- :mod:`taskdb.metrics.exporter`: serving ``/metrics``, one scrape to stdout, a textfile for node_exporter.

The alert rules and the Grafana dashboard that read these metrics are in the repository's ``monitoring/``.
"""

from taskdb.metrics.collector import METRICS, RUN_TYPES, Scraper, TaskdbCollector
from taskdb.metrics.exporter import once, serve, textfile

__all__ = ["METRICS", "RUN_TYPES", "Scraper", "TaskdbCollector", "once", "serve", "textfile"]
