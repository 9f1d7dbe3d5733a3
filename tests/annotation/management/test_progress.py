"""Shell progress bars: one bar per stage from the platform's (done, total) and (stage, done, total) callbacks, and
a round's stage as a bar for `run_loop`; silent when stderr is not a terminal."""

import io
from types import SimpleNamespace

from annotation.management.progress import ROUND_STAGES, ShellProgress


def test_bars_follow_stages_and_counts():
    out = io.StringIO()
    with ShellProgress("Importing", unit="file", disable=False, file=out) as progress:
        progress(1, 4)
        progress(4, 4)
        assert progress.bar.n == 4 and progress.bar.total == 4
        progress("fitting the tiny VAE", 25, 100)
        assert progress.stage == "fitting the tiny VAE" and progress.bar.n == 25
        poll = progress.round_poll("feedback loop")
        poll(SimpleNamespace(number=2, status="labeling"))
        assert progress.stage == "feedback loop round 2" and progress.bar.n == ROUND_STAGES.index("labeling")
    text = out.getvalue()
    assert "Importing" in text and "/4" in text and "fitting the tiny VAE" in text and "labeling" in text


def test_silent_without_a_terminal():
    progress = ShellProgress("x", file=io.StringIO())  # disable=None: tqdm stays silent off a terminal
    progress(1, 2)
    assert progress.bar.disable
    progress.close()
