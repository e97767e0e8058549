"""Search a compression policy: ``python scripts/search.py --env ChannelPrune-MobileNetV1-v0 --agent ddpg``.

Thin entry point; see ``pf_agents/cli.py`` (``--help``) for the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pf_agents.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
