"""``pf-evaluate`` in a checkout; the command is ``pf_envs.zoo.evaluate:main`` (``--help``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pf_envs.zoo.evaluate import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
