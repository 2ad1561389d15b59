"""taskdb: make a live PostgreSQL ``tasks`` queue table honest again, and keep it honest."""

__version__ = "0.1.0"
