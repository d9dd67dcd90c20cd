"""Prometheus exporter for the Homepage CMS: the DBA runbook's checks as metrics."""

__version__ = "0.1.0"
