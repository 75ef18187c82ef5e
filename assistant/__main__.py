"""`python -m assistant ...` (and `accelerate launch -m assistant ...`) = the `assistant` command."""

import sys

from assistant.cli import main

sys.exit(main())
