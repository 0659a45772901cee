"""``python -m cli ...``: the same as ``edgediff ...``."""

import sys

from cli.main import main

sys.exit(main())
