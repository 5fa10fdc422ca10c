"""Would Winograd convolution get CPU image conversion past the fp32 bound? (An experiment.)

On the CPU the default generator's 3x3 convolutions already run at the cores' fp32 peak, so
batching cannot speed up conversion (RESULTS.md, "Converting images"). Only doing fewer
multiplications can. Winograd's F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016) computes each 4x4 block of outputs from a 6x6 block of input with 36
multiplications per channel pair instead of 144, plus linear transforms before and after. Here
it is written with PyTorch operations (a strided gather, two small GEMMs for the transforms, one
batched GEMM for the products) and put in place of the 18 residual-block convolutions of the
default CycleGAN generator. It is not in styletx: RESULTS.md says why.

    python benchmarks/winograd_convolution.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from styletx.plugins.cyclegan import ResnetGenerator

# F(4, 3) with the points 0, ±1, ±2: output = A^T [(G g G^T) * (B^T d B)] A.
B_T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
A_T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
TILES_PER_BLOCK = 256  # tiles transformed and multiplied together (best of 128-512 measured)


class WinogradConv2d(nn.Module):
    """A fixed, inference-only copy of a 3x3, stride-1, padding-1 ``nn.Conv2d``."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        g = torch.tensor(G, dtype=torch.float64)
        weight = torch.einsum("ik,ockl,jl->ijoc", g, conv.weight.detach().double(), g)
        self.weight = weight.reshape(36, *conv.weight.shape[:2]).float().contiguous()
        self.bias = None if conv.bias is None else conv.bias.detach().view(1, -1, 1, 1)
        self.before = torch.kron(*[torch.tensor(B_T, dtype=torch.float32)] * 2)  # on a 6x6 tile
        self.after = torch.kron(*[torch.tensor(A_T, dtype=torch.float32)] * 2)
        self.pad_mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        rows, cols = -(-height // 4), -(-width // 4)
        x = F.pad(x, (1, 1, 1, 1), mode=self.pad_mode)
        x = F.pad(x, (0, cols * 4 - width, 0, rows * 4 - height))  # whole tiles; cropped below
        out = x.new_empty(n, self.weight.shape[1], rows * 4, cols * 4)
        step = max(1, TILES_PER_BLOCK // (n * cols))
        for top in range(0, rows, step):
            count = min(step, rows - top)
            block = x[:, :, top * 4:(top + count) * 4 + 2]
            out[:, :, top * 4:(top + count) * 4] = self._tiles(block, count, cols)
        out = out[:, :, :height, :width]
        return out if self.bias is None else out + self.bias

    def _tiles(self, x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        n, channels = x.shape[:2]
        s_n, s_c, s_h, s_w = x.stride()
        # Element (i, j) of every 6x6 tile (tiles overlap by 2): a strided view, gathered once.
        tiles = x.as_strided((6, 6, channels, n, rows, cols),
                             (s_h, s_w, s_c, s_n, 4 * s_h, 4 * s_w))
        spectra = (self.before @ tiles.reshape(36, -1)).view(36, channels, -1)
        products = torch.bmm(self.weight, spectra)
        outputs = self.after @ products.view(36, -1)
        return (outputs.view(4, 4, -1, n, rows, cols).permute(3, 2, 4, 0, 5, 1)
                .reshape(n, -1, rows * 4, cols * 4))


def with_winograd(generator: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``generator`` with every 3x3 stride-1 convolution replaced."""
    generator = copy.deepcopy(generator)
    count = 0
    for parent in list(generator.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3)
                    and child.stride == (1, 1) and child.padding == (1, 1) and child.groups == 1):
                setattr(parent, name, WinogradConv2d(child))
                count += 1
    return generator, count


def milliseconds(fn, x: torch.Tensor, repeats: int) -> float:
    fn(x)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    direct = ResnetGenerator(3, 3).eval()
    winograd, count = with_winograd(direct)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{count} convolutions replaced")
    layer = direct.body[9].block[0]  # the first residual block's first convolution, 256 channels
    cases = [("one conv, 256 ch, 64x64", layer, WinogradConv2d(layer), (1, 256, 64, 64), 20)]
    cases += [(f"generator, {n} x {s} px", direct, winograd, (n, 3, s, s), r)
              for n, s, r in [(1, 256, 3), (4, 64, 5), (1, 512, 1)]]
    print(f"{'':28} {'direct ms':>10} {'winograd ms':>12} {'ratio':>6} {'max diff':>9}")
    with torch.no_grad():
        for name, a, b, shape, repeats in cases:
            x = torch.rand(shape) * 2 - 1
            difference = (a(x) - b(x)).abs().max().item()
            for _ in range(args.rounds):  # interleaved, so machine load falls on both alike
                t_a, t_b = milliseconds(a, x, repeats), milliseconds(b, x, repeats)
                print(f"{name:28} {t_a:10.1f} {t_b:12.1f} {t_a / t_b:5.2f}x {difference:9.1e}")


if __name__ == "__main__":
    main()
