"""``python3 -m somnus_agent``: hands over to :func:`somnus_agent.cli.main`."""

import sys

from somnus_agent import cli

sys.exit(cli.main())
