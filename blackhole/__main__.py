"""Allow ``python -m blackhole``."""

import sys

from blackhole.cli import main

sys.exit(main())
