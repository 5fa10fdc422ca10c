"""Match: voice conversion by matching frames on a content code learnt from the two folders.

kNN-VC (Baas, van Niekerk and Kamper, 2023) replaces each frame of the source with the mean of
the target's frames that say the same thing, found by nearest neighbours in the features of a
self-supervised speech model. Such a model is trained on thousands of hours and cannot be
downloaded here, so this translator learns its own content code from the user's two folders:

    content encoder E: a frame and ``context`` frames each side -> ``content_dim`` values
    reconstructor R:   the code and who speaks (A or B, one-hot) -> the frames again
    speaker adversary S: the code -> who speaks; its gradient reaches E reversed (Ganin and
        Lempitsky, 2015), times ``adversary``, so that E keeps what R needs and S cannot use

A code of a few values per frame that reconstructs both voices, given the speaker for free, and
from which the speaker cannot be told, says what is said, not who says it (AutoVC's bottleneck,
Qian et al., 2019, with an adversary). ``encoders`` independent codes are joined, each scaled to
unit spread: their errors differ, so the join finds neighbours more reliably than one code.

Conversion A -> B: the source's frames are encoded; the ``match_k`` frames of B's training
recordings whose codes' neighbourhoods (``match_context`` frames each side) are nearest are each
frame's candidates (``KeyedFrameMatching``), and each frame becomes one of them, chosen along
the path through the utterance that keeps to runs of B's recordings (``match_join``; 0: the
mean of the candidates); B's encoder decodes the result. The frames are B's own, so timbre and
pitch are B's; timing and words are the source's.

On the real-recording voice benchmark (benchmarks/RESULTS.md, "Match: frame matching on a learnt
content code" and "Match's default") this converts closer to the target than the voice
CycleGAN matched on its own output (MCD 2.72-2.85 -> 2.49-2.53 dB; the mean of 8, 2.31),
nearer the target's voice and cleaner.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

import styletx
from styletx import DIRECTIONS, Preset, StyletxError, UsageError, direction_sides
from styletx.audio.matching import MAX_CONTEXT, KeyedFrameMatching
from styletx.nn import adam

SPEAKERS = 2  # A and B
FAST_TRAINING = dict(size=64, batch_size=4, steps=3000)  # the default and fast presets


@dataclasses.dataclass
class MatchConfig:
    bins: int = 0  # frequency bins of the spectrograms: taken from the data
    content_dim: int = 16  # values per frame of each content code: 32 kept some of the voice
    #                        (MCD 2.50 against 2.34 at 16), 8 lost some of the words (2.37)
    context: int = 4  # frames each side the content encoder sees (+-46 ms at the mel hop)
    hidden: int = 512  # width of the encoder's, reconstructor's and adversary's layers
    adversary: float = 0.05  # reversed gradient of the speaker adversary, times this: 0
    #                          leaves the voice in the code (MCD 2.63), 0.2 and more disturb
    #                          it (2.57; 1.0: nothing learnt)
    encoders: int = 2  # independent content codes, joined
    lr: float = 1e-3  # Adam, constant
    match_k: int = 16  # candidate target frames per converted frame (with match_join 0: the
    #                    frames averaged; there 8 was as close as 16 and a little cleaner)
    match_context: int = 3  # frames each side whose codes the matching compares too
    match_join: float = 2.0  # > 0: each converted frame is one of its match_k nearest, chosen
    #                          along the path that best follows on from frame to frame (unit
    #                          selection; FrameMatching); higher: fewer, smoother jumps. 0: the
    #                          mean of the match_k nearest. Against the mean of 8 (benchmarks/
    #                          RESULTS.md, "Match's default"): DNSMOS 2.29 -> 2.89 (English
    #                          pair), 1.99 / 2.01 -> 2.23 / 2.20 (Italian, two runs), speaker
    #                          similarity +0.03 to +0.05, MCD +0.18 to +0.32 dB

    def __post_init__(self):
        if self.match_k < 1:
            raise UsageError(f"match: match_k must be at least 1 (the target frames each "
                             f"frame is chosen from), not {self.match_k}")
        if not 0 <= self.match_context <= MAX_CONTEXT:
            raise UsageError(f"match: match_context must be from 0 to {MAX_CONTEXT} frames, "
                             f"not {self.match_context}")
        if not 0 <= self.match_join < math.inf:
            raise UsageError(f"match: match_join must be a number >= 0 (0: the mean of the "
                             f"match_k nearest), not {self.match_join}")


class ContentEncoder(nn.Module):
    """``(N, C, bins, T) -> (N, content_dim, T')``: a dense network on each frame with
    ``context`` frames each side, as convolutions along time. ``T' = T - 2 context`` unpadded
    (training: every code sees real frames only), ``T`` padded (conversion: the first and last
    frames repeated). ``scale``, the codes' spread over the training frames, is set after
    training so that joined codes weigh alike."""

    def __init__(self, channels: int, bins: int, context: int, hidden: int, content_dim: int):
        super().__init__()
        self.context = context
        self.net = nn.Sequential(
            nn.Conv1d(channels * bins, hidden, 2 * context + 1), nn.GELU(),
            nn.Conv1d(hidden, hidden, 1), nn.GELU(),
            nn.Conv1d(hidden, content_dim, 1))
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x: torch.Tensor, pad: bool = True) -> torch.Tensor:
        frames = x.flatten(1, 2)
        if pad:
            frames = F.pad(frames, (self.context, self.context), mode="replicate")
        return self.net(frames)


def pointwise(sizes: list[int]) -> nn.Sequential:
    """Dense layers applied to every frame: 1x1 convolutions along time, GELU between."""
    layers: list[nn.Module] = []
    for i, (m, n) in enumerate(zip(sizes, sizes[1:])):
        layers += [nn.Conv1d(m, n, 1)] + ([nn.GELU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class _ReverseGradient(torch.autograd.Function):
    """The identity forward; the gradient backward times ``-weight``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


class Match(styletx.Translator):
    name = "match"
    preview_columns = ("input", "translated", "translated back")
    Config = MatchConfig
    conversion_settings = ("match_k", "match_context", "match_join")
    paired = False
    presets: dict[str, Preset] = {}  # spectrograms only: see domain_presets
    domain_presets = {"audio": {
        "default": Preset(
            train=FAST_TRAINING,
            description="two content codes of 16 values from +-4 frames (dense 512-wide "
                        "networks), speaker adversary 0.05, lr 1e-3, 3000 steps of 64-frame "
                        "segments, batch 4; converts each frame to one of the target's 16 "
                        "nearest frames (+-3 frames compared), along the least-cost path "
                        "that keeps to runs of the target's recordings (match_join 2)",
        ),
        "fast": Preset(
            train=FAST_TRAINING,
            description="the default: it is a CPU model already (~0.1 s a step on one "
                        "thread at 128 bins); pair with --minutes",
        ),
        "tiny": Preset(
            config=dict(content_dim=8, hidden=64, encoders=1, match_k=4),
            train=dict(size=64, batch_size=4, steps=200),
            description="for tests and smoke runs: one code of 8 values from a 64-wide "
                        "network, 4 nearest frames",
        ),
    }}

    @classmethod
    def config_for_data(cls, config: MatchConfig, shapes: dict, crop: tuple) -> MatchConfig:
        """The networks are built for the spectrograms' channels and bins: take them from the
        data, which must have the same on both sides and crops longer than the encoder's
        window."""
        kinds = {tuple(shape[:2]) for shape in shapes.values()}
        if len(kinds) != 1:
            raise UsageError(f"match: A and B spectrograms differ in (channels, bins): {kinds} "
                             f"(use one encoder for both sides)")
        if crop[1] <= 2 * config.context or crop[1] < config.match_k:
            raise UsageError(f"match: training segments of {crop[1]} frames are too short for "
                             f"a content window of {2 * config.context + 1} frames and "
                             f"match_k={config.match_k}")
        return dataclasses.replace(config, bins=kinds.pop()[1])

    def __init__(self, config: MatchConfig, channels_a: int, channels_b: int):
        super().__init__(config, channels_a, channels_b)
        c = config
        if channels_a != channels_b:
            raise UsageError(f"match: A and B need the same channels, not {channels_a} and "
                             f"{channels_b}")
        values = channels_a * c.bins * (2 * c.context + 1)  # a window of frames
        self.encoders = nn.ModuleList(
            ContentEncoder(channels_a, c.bins, c.context, c.hidden, c.content_dim)
            for _ in range(c.encoders))
        self.reconstructors = nn.ModuleList(
            pointwise([c.content_dim + SPEAKERS, c.hidden, c.hidden, values])
            for _ in range(c.encoders))
        self.adversaries = nn.ModuleList(
            pointwise([c.content_dim, c.hidden // 2, c.hidden // 2, SPEAKERS])
            for _ in range(c.encoders))
        code_dim = c.content_dim * c.encoders
        # Each side's training frames and their codes, filled after training: M_A holds B's
        # (a2b converts onto them), M_B holds A's.
        self.M_A = KeyedFrameMatching(channels_b, c.bins, code_dim, c.match_k, c.match_context,
                                      c.match_join)
        self.M_B = KeyedFrameMatching(channels_a, c.bins, code_dim, c.match_k, c.match_context,
                                      c.match_join)

    def networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {}
        for i in range(self.config.encoders):
            nets |= {f"E{i}": self.encoders[i], f"R{i}": self.reconstructors[i],
                     f"S{i}": self.adversaries[i]}
        return nets | {"M_A": self.M_A, "M_B": self.M_B}

    def generator_networks(self) -> dict[str, nn.Module]:
        """The content encoders: the reconstructors and adversaries only train them."""
        return {f"E{i}": net for i, net in enumerate(self.encoders)}

    # -- training -------------------------------------------------------------------------
    def configure_optimizers(self, total_steps: int) -> None:
        params = [p for name, net in self.networks().items() if not name.startswith("M")
                  for p in net.parameters()]
        self.optimizers = {"all": adam(params, self.config.lr, (0.9, 0.999))}
        self.schedulers = {}

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        if len(self.M_A.bank) or len(self.M_B.bank):  # a finished run trained further: the
            self.M_A.reset()  # sets' codes are the old encoders', so they go until the new
            self.M_B.reset()  # end refits them (a checkpoint on the way has none)
        a = batch["a"].to(self.device, non_blocking=True)
        b = batch["b"].to(self.device, non_blocking=True)
        optimizer = self.optimizers["all"]
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            losses = self.forward_for("all", self._losses, a, b)
        sum(losses.values()).backward()
        optimizer.step()
        values = torch.stack([v.detach().float() for v in losses.values()])
        return dict(zip(losses, values.tolist()))  # one device sync

    def _losses(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per code: how well R rebuilds both sides' windows from it (mean squared error) and
        how well S tells the speaker from it (cross-entropy; its gradient reaches E reversed)."""
        windows, speakers = [], []
        for side, x in enumerate((a, b)):
            w = x.flatten(1, 2).unfold(2, 2 * self.config.context + 1, 1)  # (N, D, T', width)
            windows.append(w.permute(0, 1, 3, 2).flatten(1, 2))  # (N, D * width, T')
            speakers.append(torch.full((len(x), w.shape[2]), side, device=x.device))
        windows_ab, speaker = torch.cat(windows), torch.cat(speakers)
        who = F.one_hot(speaker, SPEAKERS).transpose(1, 2).float()  # (2N, 2, T')
        x_ab = torch.cat([a, b])
        losses = {}
        for i, (encoder, rebuild, adversary) in enumerate(
                zip(self.encoders, self.reconstructors, self.adversaries)):
            code = encoder(x_ab, pad=False)
            rebuilt = rebuild(torch.cat([code, who.to(code.dtype)], 1))
            losses[f"rebuild_{i}"] = F.mse_loss(rebuilt.float(), windows_ab.float())
            guess = adversary(_ReverseGradient.apply(code, self.config.adversary))
            losses[f"speaker_{i}"] = F.cross_entropy(guess.float(), speaker)
        return losses

    finish_when_interrupted = True  # no sets, no conversion; filling them takes seconds (2 s
    #                                 for 15 minutes of speech on a CPU), and training_step
    #                                 empties them again on resume

    def finish_training(self, examples: dict[str, list[torch.Tensor]]) -> None:
        """Each code's spread over both sides' training frames (so that joined codes weigh
        alike), then each side's matching set: its frames and their codes. Nothing changes
        until all of it is computed, so a failure leaves the run as it was (without sets)."""
        self.train(False)
        for matching in (self.M_A, self.M_B):
            matching.reset()
        frames = {side: [x.to(self.device, torch.float32) for x in examples[side]]
                  for side in ("a", "b")}
        with torch.no_grad():
            raw = {side: [[e(x[None])[0] for e in self.encoders] for x in frames[side]]
                   for side in ("a", "b")}  # per example, each encoder's unscaled code
            scales = [max(float(torch.cat([codes[i] for side in raw for codes in raw[side]],
                                          dim=1).std()), 1e-6)  # a collapsed code: no NaN
                      for i in range(len(self.encoders))]
            for encoder, scale in zip(self.encoders, scales):
                encoder.scale.fill_(scale)
            self._fit_sets(frames, {side: [torch.cat([c / s for c, s in zip(codes, scales)])
                                           for codes in raw[side]] for side in raw})

    def _fit_sets(self, frames: dict[str, list[torch.Tensor]],
                  keys: dict[str, list[torch.Tensor]]) -> None:
        """Each direction's set: its target side's frames and their joined codes."""
        for direction in DIRECTIONS:
            side = direction_sides(direction)[1]
            self._matching(direction).fit(frames[side], keys[side])

    # -- conversion -----------------------------------------------------------------------
    def code(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, bins, T) -> (N, content_dim * encoders, T)``: the joined content codes."""
        return joined_code(self.encoders, x)

    def _matching(self, direction: str) -> KeyedFrameMatching:
        return self.M_A if direction == "a2b" else self.M_B

    def translate(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        """``(N, C, bins, T) -> (N, C, bins, T)``: each frame replaced by one of the target
        side's training frames whose codes are nearest (with ``match_join`` 0, by their mean);
        any T."""
        self._check_input(x, direction)
        with torch.no_grad(), self.autocast():  # codes in bf16 where enabled, search in fp32
            return self._converter(direction)(x.to(self.device, torch.float32)).to(x.device)

    def _check_input(self, x: torch.Tensor, direction: str) -> None:
        src, _ = direction_sides(direction)
        expected = (self.channels[src], self.config.bins)
        if x.ndim != 4 or tuple(x.shape[1:3]) != expected:
            raise ValueError(f"{direction} expects (N, {expected[0]}, {expected[1]}, T), got "
                             f"{tuple(x.shape)}")

    def _check_sets(self, direction: str) -> None:
        if len(self._matching(direction).bank) == 0:
            raise StyletxError("match: this model has no matching sets; every checkpoint of "
                               "this version fills them (rerun the train command to save one)")

    def export_module(self, direction: str) -> nn.Module:
        """The codes and the target side's matching set, as one module."""
        return self._converter(direction)  # checks the direction and the sets

    def _converter(self, direction: str) -> nn.Module:
        direction_sides(direction)  # checks it
        self._check_sets(direction)
        return _Converter(self, self._matching(direction))

    def preview(self, batch: dict[str, torch.Tensor]) -> list[list[tuple[str, torch.Tensor]]]:
        """Input, translated, translated back, for one example a side. Before the sets are
        filled (during training) each direction matches onto the batch's other side."""
        rows: list[list[tuple[str, torch.Tensor]]] = []
        with torch.no_grad():
            saved = [(m.bank, m.keys) for m in (self.M_A, self.M_B)]
            try:
                if any(len(m.bank) == 0 for m in (self.M_A, self.M_B)):
                    frames = {side: list(batch[side].to(self.device).float())
                              for side in ("a", "b")}
                    self._fit_sets(frames, {side: [self.code(x[None])[0] for x in frames[side]]
                                            for side in frames})
                for src, direction, back in (("a", "a2b", "b2a"), ("b", "b2a", "a2b")):
                    x = batch[src][:1]
                    y = self.translate(x, direction)
                    rows.append([(src, x[0]), (direction[2], y[0]),
                                 (src, self.translate(y, back)[0])])
            finally:
                for m, (bank, keys) in zip((self.M_A, self.M_B), saved):
                    m.bank, m.keys = bank, keys
        return rows


class _Converter(nn.Module):
    """``(N, C, bins, T) -> (N, C, bins, T)``: a translator's codes matched onto a set."""

    def __init__(self, translator: Match, matching: KeyedFrameMatching):
        super().__init__()
        self.encoders, self.matching = translator.encoders, matching

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matching(joined_code(self.encoders, x))


def joined_code(encoders: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Each encoder's code of ``x``, over its spread, joined along the channels."""
    return torch.cat([encoder(x) / encoder.scale for encoder in encoders], dim=1)


@styletx.hookimpl
def register_translators(register):
    register(Match)
