"""``python -m lightalign ...`` = ``lightalign ...``, for launchers: ``accelerate launch -m lightalign run sft``."""

import sys

from lightalign.cli import main

if __name__ == "__main__":
    sys.exit(main())
