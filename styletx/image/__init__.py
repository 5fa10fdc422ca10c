"""Image helpers plugins may use: the image sample, quality metrics and preview grids.

    from styletx.image import ImageSample     # float32 pixels (H, W, C) in [0, 1], alpha aside
    from styletx.image.metrics import psnr, ssim
    from styletx.image.previews import save_grid
"""

from styletx.image.sample import ImageSample, mode_for

__all__ = ["ImageSample", "mode_for"]
