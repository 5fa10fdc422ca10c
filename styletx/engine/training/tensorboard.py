"""``train --log tensorboard``: what the training log and the previews hold, also as TensorBoard
events in ``RUN/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from styletx.contract.errors import UsageError

FOLDER = "tensorboard"
LOGS = ("tensorboard",)  # what --log may name


def check_available(log_to: str | None) -> None:
    """A clear usage error, before any work, when --log names something unknown or missing."""
    if log_to is None:
        return
    if log_to not in LOGS:
        raise UsageError(f"--log must be one of {', '.join(LOGS)} (got {log_to})")
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UsageError('--log tensorboard needs the tensorboard package: '
                         'pip install "styletx[tensorboard]"') from None


class TensorBoardLog:
    def __init__(self, run: Path, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run drops the events it had written after its checkpoint.
        self.writer = SummaryWriter(str(run / FOLDER), purge_step=first_step or None)

    def scalars(self, step: int, losses: dict[str, float], lrs: dict[str, float],
                steps_per_s: float) -> None:
        for name, value in losses.items():
            self.writer.add_scalar(f"loss/{name}", value, step)
        for name, value in lrs.items():
            self.writer.add_scalar(f"lr/{name}", value, step)
        self.writer.add_scalar("speed/steps_per_s", steps_per_s, step)

    def picture(self, step: int, png: Path) -> None:
        from PIL import Image

        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image("preview", pixels, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
