"""Frame matching: a converted spectrogram pulled onto the target voice's own frames.

A voice model trained for minutes on a CPU gets the target's timbre only roughly: its frames
are smoother and less like the target's than a recording's. kNN-VC (Baas, van Niekerk and
Kamper, "Voice Conversion With Just Nearest Neighbors", 2023) converts by replacing each
frame of the source with the mean of its k nearest frames in a "matching set" of the
target's recordings. ``FrameMatching`` does that to the *translator's output*: each output
frame becomes the mean of the k real target frames whose neighbourhood (the frame and
``context`` frames on each side) is nearest to the output frame's neighbourhood. Matching
whole neighbourhoods rather than single frames picks frames of the same sound in the same
place of a syllable. On the real-recording voice benchmark (benchmarks/RESULTS.md, "Frame
matching") k = 16 and a context of 4 frames took 0.2-0.25 dB off the `fast` preset's MCD and
raised its speaker similarity and DNSMOS; single frames (context 0) gained a third of that.

The matching set is a buffer of the module (so it is saved in the run, moved to the run's
device, and part of an exported model): up to ``MATCH_VALUES`` values of the target side's
training examples, fitted by ``fit``. Empty (before ``fit``, or after ``reset``) the module
changes nothing.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from styletx.contract.errors import UsageError

__all__ = ["MATCH_FRAMES", "MATCH_VALUES", "MAX_CONTEXT", "FrameMatching", "KeyedFrameMatching"]

MATCH_FRAMES = 30_000  # the matching set's frames at most: ~5.8 min of the mel encoder's
#                        (22.05 kHz, hop 256), 5 min of the world encoder's (10 ms).
#                        kNN-VC's matching improves with up to ~8 min of the target; every
#                        converted frame is compared with all of the set
MATCH_VALUES = MATCH_FRAMES * 128  # and at most 15 MB of float32 (7 485 of the stft
#                                    encoder's 513-bin frames), saved in the run
MAX_CONTEXT = 32  # frames each side a neighbourhood may span (+-0.37 s at the mel hop): the
#                  best measured were 2-4, wider ones compare other syllables, and the window
#                  distances' memory grows with (frames + 2 context) x (set frames + 2 context)
BLOCK = 512  # converted frames compared with the set at a time: the distances of a block
#              take BLOCK x set frames x 8 bytes (123 MB at 30 000), whatever the input's length


class FrameMatching(nn.Module):
    """``(N, C, bins, T) -> (N, C, bins, T)``: each frame replaced by the mean of the ``k``
    frames of the matching set whose ``2 * context + 1``-frame neighbourhoods are nearest
    (Euclidean) to its own; no change while the set is empty.

    With ``join`` > 0, each frame instead becomes *one* of its ``k`` nearest: the one on the
    path through the candidates that best trades nearness against jumps (unit selection, as
    concatenative speech synthesis chooses recorded units). A jump is a frame that does not
    continue, in the set's recording, the frame chosen before it; it costs ``join`` times how
    unlike the frame that would have continued it is (``_least_cost_path``). Runs of a real
    recording keep their harmonics, where a mean of frames of different pitches blurs them:
    cleaner speech, a little less close."""

    def __init__(self, channels: int, bins: int, k: int = 16, context: int = 4,
                 join: float = 0.0):
        super().__init__()
        if k < 1 or not 0 <= context <= MAX_CONTEXT or join < 0:
            raise ValueError(f"frame matching needs k >= 1, context from 0 to {MAX_CONTEXT} "
                             f"and join >= 0, not {k}, {context} and {join}")
        self.shape, self.k, self.context, self.join = (channels, bins), k, context, join
        self.register_buffer("bank", torch.zeros(0, channels * bins))

    def fit(self, examples: list[torch.Tensor], seed: int = 0) -> None:
        """The matching set: the frames of ``examples`` (each ``(C, bins, T)``), all of them
        while they fit in ``MATCH_VALUES``, else whole examples in a seeded order until it is
        full (whole, so that neighbourhoods stay within one recording; the last one cut)."""
        self.bank = self._set_frames(examples, seed)

    def _set_frames(self, examples: list[torch.Tensor], seed: int) -> torch.Tensor:
        """``(M, values per frame)``: the frames ``fit`` keeps of ``examples`` (``(..., T)``
        each; the cap counts ``self.bank``'s values per frame, so that examples of another
        width but the same lengths give the same frames)."""
        most = max(self.k, min(MATCH_FRAMES, MATCH_VALUES // self.bank.shape[1]))
        order = np.random.default_rng(seed).permutation(len(examples))
        if sum(x.shape[-1] for x in examples) <= most:
            order = range(len(examples))
        frames, total = [], 0
        for i in order:
            x = examples[int(i)][..., : most - total]
            frames.append(x.reshape(-1, x.shape[-1]).T.float())
            total += x.shape[-1]
            if total >= most:
                break
        bank = torch.cat(frames).to(self.bank.device)
        if len(bank) < self.k:
            raise ValueError(f"frame matching with k={self.k} needs at least {self.k} frames "
                             f"of the target, got {len(bank)}")
        return bank

    def reset(self) -> None:
        """No change again."""
        self.bank = self.bank.new_zeros(0, self.bank.shape[1])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if len(self.bank) == 0:
            return y
        if _autocast_enabled(y.device.type):  # the distances need float32's precision:
            with torch.autocast(y.device.type, enabled=False):  # bfloat16 mixes up neighbours
                return self.forward(y)
        return self._matched(y.flatten(1, 2).transpose(1, 2).float(), self.bank, y.dtype)

    def _matched(self, queries: torch.Tensor, keys: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
        """``(N, C, bins, T)``: for each of the queries ``(N, T, D)``, the mean of the set's
        frames whose keys ``(M, D)`` (one per frame of the set) are nearest, neighbourhoods
        compared (with ``join``, one of those frames, along the least-cost path)."""
        n, t, c = *queries.shape[:2], self.context
        padded, keys = _padded(queries, c), _padded(keys[None], c)[0]
        if _capturing_graph():  # an exported model: one graph for any length, in one piece
            distances, nearest = self._nearest(padded, keys, t)
        else:  # in blocks, so that memory stays bounded for any length (item-major order)
            blocks = [self._nearest(padded[i : i + 1, start : start + BLOCK + 2 * c], keys,
                                    min(BLOCK, t - start))
                      for i in range(n) for start in range(0, t, BLOCK)]
            nearest = torch.cat([b.indices for b in blocks], dim=1).view(n, t, self.k)
            distances = torch.cat([b.values for b in blocks], dim=1).view(n, t, self.k)
        if self.join:  # one of the candidates per frame, along the least-cost path
            nearest = _least_cost_path(distances, nearest, self.bank, self.join)[..., None]
        matched = self.bank[nearest].mean(dim=2)  # (N, T, C * bins)
        return matched.transpose(1, 2).unflatten(1, self.shape).to(dtype)

    def _nearest(self, padded: torch.Tensor, bank: torch.Tensor, t: int):
        """The distances and indices ``(N, t, k)`` of the set's frames nearest to each of the
        ``t`` frames of ``padded`` (which has ``context`` frames more on each side)."""
        distances = _window_distances(padded, bank, t, 2 * self.context + 1)
        return distances.topk(self.k, dim=-1, largest=False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args,
                              **kwargs):
        if strict and prefix + "bank" not in state_dict:  # convert --set match_k=8 on a run
            raise UsageError("frame matching: this model saved no matching set (it was "
                             "trained without frame matching)")
        # the saved set's length is the run's, not the empty one built with the module (a
        # different width is left to the size check, which names the tensor)
        for name, buffer in list(self._buffers.items()):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.ndim == 2 and saved.shape[1] == buffer.shape[1]:
                setattr(self, name, buffer.new_zeros(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args,
                                      **kwargs)
        if 0 < len(self.bank) < self.k:  # k changed for a conversion (styletx convert --set)
            raise UsageError(f"frame matching with k={self.k} needs at least {self.k} frames "
                             f"of the target; this model's matching set for one direction has "
                             f"{len(self.bank)} (k must fit both directions' sets)")


class KeyedFrameMatching(FrameMatching):
    """``(N, key_dim, T) -> (N, C, bins, T)``: frame matching searched by keys other than the
    frames themselves. Each frame of the set has a key (a content code of the target's
    recording there); a query is a sequence of keys, and each of its frames becomes the mean
    of the ``k`` set frames whose keys' neighbourhoods are nearest (with ``join``, one of
    them, as ``FrameMatching``). Used by the ``match`` translator, whose keys say what is said
    and not who says it (it sets k 16 and join 2)."""

    def __init__(self, channels: int, bins: int, key_dim: int, k: int = 8, context: int = 3,
                 join: float = 0.0):
        super().__init__(channels, bins, k, context, join)
        self.register_buffer("keys", torch.zeros(0, key_dim))

    def fit(self, examples: list[torch.Tensor], keys: list[torch.Tensor] = (),
            seed: int = 0) -> None:
        """The set: the frames of ``examples`` (each ``(C, bins, T)``) as ``FrameMatching``
        keeps them, with the matching frames of ``keys`` (each ``(key_dim, T)``, one per
        example, of the same length)."""
        if [x.shape[-1] for x in keys] != [x.shape[-1] for x in examples]:
            raise ValueError("keyed frame matching needs one key per frame of every example")
        self.bank = self._set_frames(examples, seed)
        self.keys = self._set_frames(keys, seed)  # the same examples: equal lengths, one order

    def reset(self) -> None:
        super().reset()
        self.keys = self.keys.new_zeros(0, self.keys.shape[1])

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        if len(self.bank) == 0:
            raise ValueError("the matching set is empty: fit it first")
        if _autocast_enabled(keys.device.type):  # float32 distances, as FrameMatching
            with torch.autocast(keys.device.type, enabled=False):
                return self.forward(keys)
        return self._matched(keys.float().transpose(1, 2), self.keys, torch.float32)


def _least_cost_path(distances: torch.Tensor, candidates: torch.Tensor, bank: torch.Tensor,
                     join: float) -> torch.Tensor:
    """``(N, T, k)`` distances and set indices of each frame's candidates -> ``(N, T)`` the set
    index chosen per frame: the path whose distances plus jump costs sum to the least
    (Viterbi). Continuing (set frame j + 1 after j) is free; a jump costs ``join`` times how
    far the frame chosen is from the one that would have continued (a concatenation cost: a
    jump to a frame like the natural next one is cheap, across a change of pitch or sound
    dear). Both kinds of cost are scaled by their medians. Measured against a flat cost per
    jump: DNSMOS 2.61 -> 2.78 on the English pair at join 1, MCD 2.67 -> 2.66 (each cost over
    its median, identical frames left out of the jumps' median: most of an utterance of
    digital silence would otherwise make it 0 and every jump infinitely dear)."""
    if candidates.shape[-1] == 1:
        return candidates[..., 0]
    costs = distances / _median(distances[..., 0]).clamp_min(1e-12)[:, None, None]
    joins = _join_distances(candidates, bank).flatten(1)  # (N, (T - 1) * before * now)
    scale = join / _median(joins, joins > 0)  # jumps only: not continuing, nor identical
    continues = candidates[:, 1:, None, :] == candidates[:, :-1, :, None] + 1
    joins = (joins * scale[:, None]).view(continues.shape).masked_fill(continues, 0)
    # A Python loop over the frames, which an exported model must keep a loop for any
    # length: a trace (TorchScript) would unroll it to the traced length, so it traces a
    # scripted copy, whose loop it keeps; torch.export cannot capture a loop over a dynamic
    # length at all, so it captures two scans (ONNX Scan).
    viterbi = _viterbi
    if torch.jit.is_tracing():
        viterbi = _scripted_viterbi()
    elif torch.compiler.is_exporting():
        viterbi = _viterbi_scan
    choice = viterbi(costs.transpose(0, 1).contiguous(), joins.transpose(0, 1).contiguous())
    return candidates.gather(2, choice.T[..., None])[..., 0]


def _viterbi(costs: torch.Tensor, joins: torch.Tensor) -> torch.Tensor:
    """``(T, N, k)`` costs per frame and candidate, ``(T - 1, N, k, k)`` costs of each step
    (from a candidate before to one now) -> ``(T, N)`` the candidate chosen per frame, on the
    path of least total cost. A loop over the frames (TorchScript can compile it as it is)."""
    total = costs[0]
    backs: list[torch.Tensor] = []
    for s in range(1, costs.shape[0]):
        total, back = _viterbi_step(total, costs[s], joins[s - 1])
        backs.append(back)
    choice = total.argmin(dim=-1)
    path = [choice]
    for s in range(len(backs) - 1, -1, -1):
        choice = backs[s].gather(1, choice[:, None])[:, 0]
        path.append(choice)
    path.reverse()
    return torch.stack(path)


@functools.cache
def _scripted_viterbi():
    with warnings.catch_warnings():  # torch.jit.script is deprecated, as TorchScript export
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_viterbi)


def _viterbi_step(total: torch.Tensor, cost: torch.Tensor,
                  join: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame of the search: ``(N, k)`` the least total cost of a path ending at each
    candidate of the frame before, ``(N, k)`` this frame's costs, ``(N, k, k)`` the steps'
    -> the least totals ending at each of this frame's candidates, and the candidate before
    that each came from."""
    best, back = (total[:, :, None] + join).min(dim=1)
    return best + cost, back


def _viterbi_scan(costs: torch.Tensor, joins: torch.Tensor) -> torch.Tensor:
    """``_viterbi`` as two scans (forward, then back along the pointers), the form
    torch.export and the ONNX exporter keep as a loop (ONNX Scan) for any length of at least
    two frames (``styletx export``'s padding sees to that)."""
    from torch._higher_order_ops.scan import scan

    def forward(total, step):
        total, back = _viterbi_step(total, *step)
        return total.clone(), back.clone()  # (scan's outputs may not alias its inputs)

    def backward(choice, back):
        return back.gather(1, choice[:, None])[:, 0].clone(), choice.clone()

    total, backs = scan(forward, costs[0], (costs[1:], joins))
    first, rest = scan(backward, total.argmin(dim=-1), backs, reverse=True)
    return torch.cat([first[None], rest])


def _median(values: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, M) -> (N,)``: the lower median (``torch.median``'s) of each row's values, or of
    those where ``counted``; 1 for a row with none counted. A sort, not ``torch.median`` or a
    boolean selection, so that the ONNX exporter takes it and keeps one graph for any size."""
    if counted is None:
        counted = torch.ones_like(values, dtype=torch.bool)
    count = counted.sum(dim=-1)
    ordered = values.masked_fill(~counted, torch.inf).sort(dim=-1).values
    ordered = F.pad(ordered, (0, 1), value=1.0)  # so that the gather has something to take
    #                                              from an empty row (one-frame utterances)
    middle = ordered.gather(1, ((count - 1).clamp_min(0) // 2)[:, None])[:, 0]
    return torch.where(count > 0, middle, torch.ones_like(middle))


def _join_distances(candidates: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``(N, T - 1, k, k)``: squared distances from each candidate's successor in the set to
    each candidate of the next frame; ``BLOCK`` frames at a time (memory stays bounded), in
    one piece when captured for export."""
    def block(start, stop):  # the steps from frames start .. stop - 1 to the frame after each
        successors = bank[(candidates[:, start:stop] + 1).clamp_max(len(bank) - 1)]
        now = bank[candidates[:, start + 1 : stop + 1]]
        # one candidate before at a time: k small differences, not a (.., k, k, values) one
        # (nor torch.cdist, which the ONNX exporter does not take)
        return torch.stack([(now - successors[:, :, i, None]).pow(2).sum(-1)
                            for i in range(successors.shape[2])], dim=2)

    steps = candidates.shape[1] - 1
    if _capturing_graph():
        return block(0, steps)
    return torch.cat([block(start, min(start + BLOCK, steps))
                      for start in range(0, max(steps, 1), BLOCK)], dim=1)


def _window_distances(q: torch.Tensor, b: torch.Tensor, t: int, width: int) -> torch.Tensor:
    """Squared Euclidean distances ``(N, t, M)`` between the ``width``-frame windows of ``q``
    ``(N, t + width - 1, D)`` and those of ``b`` ``(M + width - 1, D)`` (both padded by the
    caller). The sum over a window of per-frame dot products is a sum along the diagonals of
    one product ``q b^T``, so the cost is one matrix product however wide the window. Bank
    windows that straddle two recordings are a few frames in every recording's length, and
    rarely the nearest."""
    m = b.shape[0] - width + 1
    products = q @ b.T  # (N, t + width - 1, M + width - 1)
    distances = products[:, :t, :m] * -2
    for i in range(1, width):
        distances.add_(products[:, i : i + t, i : i + m], alpha=-2)
    del products
    q_norms = _window_sums(q.pow(2).sum(-1), width)  # (N, t)
    b_norms = _window_sums(b.pow(2).sum(-1)[None], width)[0]  # (M,)
    return distances.add_(q_norms[..., None]).add_(b_norms)


def _padded(frames: torch.Tensor, context: int) -> torch.Tensor:
    """``(N, L, D) -> (N, L + 2 context, D)``: the first and last frames repeated."""
    return F.pad(frames.transpose(1, 2), (context, context), mode="replicate").transpose(1, 2)


def _window_sums(values: torch.Tensor, width: int) -> torch.Tensor:
    """``(N, L + width - 1) -> (N, L)``: sums over ``width`` consecutive values."""
    return F.avg_pool1d(values[:, None], width, stride=1)[:, 0] * width


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def _capturing_graph() -> bool:
    """Traced (TorchScript) or captured by torch.export / torch.compile."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return torch.jit.is_tracing() or bool(is_compiling and is_compiling())
