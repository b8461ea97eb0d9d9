"""One run per output folder (issue 23 item 5): a second process is refused while the first
holds the lock; a lock left by a killed process is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from lvlm_lens.errors import RunError
from lvlm_lens.run.lock import LOCK_NAME, acquire_lock, release_lock
from lvlm_lens.run.runner import run_attribution
from tests.helpers import noise_image
from tests.run.test_fingerprints import model  # noqa: F401 (fixture)
from tests.run.test_runner import options, records

HOLD = ("import sys, time; from pathlib import Path; from lvlm_lens.run.lock import acquire_lock;"
        "acquire_lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path / 'run'``."""
    out = tmp_path / "run"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                            env=env, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_second_process_is_refused_while_the_first_runs(model, tmp_path, holder):  # noqa: F811
    recs, refs = records(model, 1), [noise_image(20, 20, 50)]
    with pytest.raises(RunError, match=rf"in use by another run \(pid {holder.pid}\)"):
        run_attribution(model, recs, options(tmp_path), reference_images=refs)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME]  # nothing written


def test_a_killed_runs_lock_is_taken_over(model, tmp_path, holder):  # noqa: F811
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    recs, refs = records(model, 1), [noise_image(20, 20, 50)]
    run = run_attribution(model, recs, options(tmp_path), reference_images=refs)
    assert (run.out / LOCK_NAME).read_text() == str(os.getpid())


def test_release_removes_only_its_own_lock(tmp_path):
    acquire_lock(tmp_path)
    acquire_lock(tmp_path)  # re-entrant within one process
    release_lock(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text("1")  # another process's (pid 1 is alive)
    release_lock(tmp_path)
    assert (tmp_path / LOCK_NAME).exists()
