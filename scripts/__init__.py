"""Entry points: the ``flywheel`` CLI and benchmark scripts."""
