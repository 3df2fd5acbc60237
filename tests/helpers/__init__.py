"""Helper modules for the test suite (importable as `helpers.<name>` with tests/ on sys.path)."""
