"""``python -m rsg_fast.train ...`` (also what torchrun launches): the same as ``rsg-fast train``."""
import sys

from rsg_fast.train.cli import main

sys.exit(main())
