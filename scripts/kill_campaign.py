"""Random kill -9 campaign against training (the figures in docs/reliability.md).

Each trial trains the tiny CycleGAN of tests/test_faults.py in a fresh process, kill -9s it at a
random point of a random save (one of the next two), and repeats until a process finishes or a
coin says stop; after each kill the run must hold a whole checkpoint of the last complete step,
and the finished run must match an uninterrupted one bit for bit, with no log line lost or
doubled and no temporary file left.

    OMP_NUM_THREADS=1 python scripts/kill_campaign.py --seed 2 --trials 12   # ~4 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_faults as faults  # noqa: E402 -- the killer and the checks of the test suite

from styletx.demo import make_image_dataset  # noqa: E402
from styletx.engine import runs  # noqa: E402

POINTS = ["mid-resume", "mid-weights", "mid-rotation", "between-renames", "before-config"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="kill-campaign-"))
    scenes = make_image_dataset(root / "scenes", n_train=12, n_test=3, size=40)
    assert faults._train_process(scenes, root / "straight", root).returncode == 0
    kills = wrong = 0
    for trial in range(args.trials):
        run, done = root / f"run{trial}", 0
        while True:
            step, point = min(faults.STEPS, done + rng.choice([1, 1, 2])), rng.choice(POINTS)
            killed = faults._train_process(scenes, run, root, f"{step}:{point}")
            if killed.returncode == 0:  # nothing to cut at that point (e.g. no rotation)
                break
            assert killed.returncode == -9, killed.stderr
            kills += 1
            expected = step if point == "before-config" else step - 1
            done = runs.load_checkpoint(run)[1]["step"] if (run / runs.WEIGHTS).exists() else 0
            wrong += done != expected
            if rng.random() < 0.2:
                break
        assert faults._train_process(scenes, run, root).returncode == 0
        try:
            faults._assert_same_run(run, root / "straight")
            assert not list(run.rglob(".*tmp-*"))
        except AssertionError:
            wrong += 1
    shutil.rmtree(root)
    print(json.dumps({"trials": args.trials, "kills": kills, "wrong": wrong}))


if __name__ == "__main__":
    main()
