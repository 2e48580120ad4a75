"""``python -m pipeline ...`` is the ``compressflow`` command."""

import sys

from pipeline.cli.main import main

sys.exit(main())
