"""`python -m assistant.bench ...` = `assistant bench ...` (also the memory probe: `... _probe`)."""

import sys

from assistant.bench.run import cli

sys.exit(cli(sys.argv[1:]))
