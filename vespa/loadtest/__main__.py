"""``python -m vespa.loadtest``: the same as ``vespa-loadtest``."""

from vespa.loadtest.cli import main

main()
