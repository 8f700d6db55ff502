"""`python -m seglab.cli ...`: the `seglab` command as a module, which is how torchrun starts it.

    torchrun --nproc-per-node 4 -m seglab.cli train CONFIG
"""

from __future__ import annotations

import sys

from seglab.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
