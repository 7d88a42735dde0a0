"""``python -m rsg_fast.bench``: the same as ``rsg-fast bench``."""
import sys

from rsg_fast.bench.cli import main

sys.exit(main())
