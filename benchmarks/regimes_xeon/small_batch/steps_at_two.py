"""The map's cell at 2 in flight, per repeat and per k: sequential steps with two requests
decoding and no prompt: how many, median step / verification / drafter round / wait for the
drafter / schedule() / update ms, accepted drafts per step and ms a token (mean step time over
mean output). Repeats as in `cells.py` (the 4th to 6th of those it keeps: the cell at 2).

    .venv/bin/python benchmarks/regimes_xeon/small_batch/steps_at_two.py TRACE [TRACE ...]
"""

from __future__ import annotations

import statistics as st
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cells import repeats  # noqa: E402

from minedraft.core.trace import read_trace  # noqa: E402


def main() -> None:
    for path in sys.argv[1:]:
        runs = [r for r in repeats(read_trace(path))
                if len(r) >= 40 and max(x.verify for x in r) in (3, 4)]
        for i, run in enumerate(runs[3:6]):
            out = []
            for k in (1, 2, 3):
                s = [r for r in run if r.kind == "sequential" and r.k == k and r.verify == 2
                     and r.tokens == 2 * (k + 1)]
                if not s:
                    continue
                accepted = st.mean(r.accepted_tokens for r in s)
                out.append(
                    f"k{k}: n={len(s)} step={st.median(r.step_ms for r in s):.1f} "
                    f"verify={st.median(r.verify_ms for r in s):.1f} "
                    f"round={st.median(r.draft_ms or 0 for r in s):.1f} "
                    f"wait={st.median(r.wait_ms for r in s):.1f} "
                    f"sched={st.median(r.sched_ms for r in s):.2f} "
                    f"upd={st.median(r.update_ms for r in s):.2f} acc={accepted:.2f} "
                    f"ms/tok={st.mean(r.step_ms for r in s) / (2 + accepted):.1f}")
            print(Path(path).name, "repeat", i + 1, " | ".join(out))


if __name__ == "__main__":
    main()
