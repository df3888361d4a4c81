"""``python -m vespa.testing.autoscaler``."""

from vespa.testing.autoscaler.cli import main

main()
