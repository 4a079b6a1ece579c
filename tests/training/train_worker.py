"""The worker the multi-process training tests start (``test_ddp.py``): trains the toy
problem, optionally kills itself with SIGKILL after a step, and saves each rank's weights::

    python tests/training/train_worker.py RUN_DIR WEIGHTS_OUT [--kill-at N] [--resume]
        [--epochs N] [--accumulate K]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from toy import tiny_config, toy_data

from spectraseg.training.loop import train


def _worker(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--kill-at", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--accumulate", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    config = tiny_config(epochs=args.epochs, accumulate=args.accumulate)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if rank != 0:
        import spectraseg.runs

        def refuse(path: object, *args: object) -> None:
            raise AssertionError(f"rank {rank} tried to write {path}")

        # Only rank 0 may write into the run directory (every write goes through these).
        spectraseg.runs.atomic_output = refuse
        spectraseg.runs.write_text_atomic = refuse

    def kill(step: int, info: dict) -> None:
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = train(
        None if args.resume else config, args.run, resume=args.resume, progress=False,
        data=toy_data(config, world), callback=kill if args.kill_at else None,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    assert result.model is not None
    torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
