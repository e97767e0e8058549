"""Collect (or resume) an episode dataset for a surrogate env:
``python scripts/collect_episodes.py --env ChannelPrune-ResNet20-v0 --out /work/episodes/cp_r20.jsonl``.

Thin entry point; see ``pf_agents/episodes.py`` (``--help``) for the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pf_agents.episodes import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
