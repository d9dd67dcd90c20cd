"""The monitoring mixin: alert rules and Grafana dashboard, generated from one thresholds file."""
