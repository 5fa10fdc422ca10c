"""Frame matching (styletx.audio.matching): converted frames replaced by the mean of their
nearest real target frames, compared with their neighbourhoods."""

import pytest
import torch
import torch.nn.functional as F

import styletx.audio.matching as matching
from styletx.audio.matching import FrameMatching


def windows(frames: torch.Tensor, context: int) -> torch.Tensor:
    """``(T, D) -> (T, (2 context + 1) D)``: each frame with its neighbours, edges repeated."""
    padded = F.pad(frames.T[None], (context, context), mode="replicate")[0]
    return padded.unfold(1, 2 * context + 1, 1).permute(1, 0, 2).reshape(len(frames), -1)


def test_window_distances_are_those_of_the_stacked_neighbourhoods():
    torch.manual_seed(0)
    queries, bank = torch.randn(2, 20, 6), torch.randn(50, 6)
    for context in (0, 2):
        brute = torch.stack([torch.cdist(windows(q, context), windows(bank, context)) ** 2
                             for q in queries])
        pad = (context, context)
        fast = matching._window_distances(
            F.pad(queries.transpose(1, 2), pad, mode="replicate").transpose(1, 2),
            F.pad(bank.T[None], pad, mode="replicate")[0].T, 20, 2 * context + 1)
        assert torch.allclose(fast, brute, atol=1e-3)


@pytest.mark.parametrize("join", [0.0, 1.5])
def test_blocks_and_one_piece_match_alike(monkeypatch, join):
    """Converting compares the frames with the set, and prices the path's joins, in blocks
    (bounded memory for any length); an exported model's graph does it in one piece: the
    same result."""
    torch.manual_seed(0)
    m = FrameMatching(1, 8, k=3, context=2, join=join)
    m.fit([torch.randn(1, 8, 60)])
    y = torch.randn(2, 1, 8, 23)
    monkeypatch.setattr(matching, "BLOCK", 5)  # 23 frames: blocks of 5, the last of 3
    blocks = m(y)
    monkeypatch.setattr(matching, "_capturing_graph", lambda: True)
    assert torch.equal(m(y), blocks)


def test_the_path_search_finds_the_least_cost_path():
    """Known answer: every path of 5 frames through 3 candidates tried (3^5). The loop (eager
    and TorchScript) and the scans (torch.export, ONNX) agree with it, item by item."""
    import itertools

    torch.manual_seed(0)
    costs, joins = torch.rand(5, 4, 3), torch.rand(4, 4, 3, 3)  # (T, N, k), (T-1, N, k, k)
    best = []
    for item in range(4):
        def total(path, item=item):
            return (sum(costs[s, item, c] for s, c in enumerate(path))
                    + sum(joins[s, item, a, b] for s, (a, b) in enumerate(zip(path, path[1:]))))
        best.append(min(itertools.product(range(3), repeat=5), key=total))
    assert matching._viterbi(costs, joins).T.tolist() == [list(path) for path in best]
    for other in (matching._viterbi_scan, matching._scripted_viterbi()):
        assert torch.equal(other(costs, joins), matching._viterbi(costs, joins))
    one = torch.rand(1, 2, 3)  # one frame: the cheapest candidate (the nearest)
    assert torch.equal(matching._viterbi(one, joins[:0]), one.argmin(-1))
    candidates = torch.randint(0, 9, (2, 1, 3))
    assert torch.equal(matching._least_cost_path(torch.rand(2, 1, 3).sort(-1).values,
                                                 candidates, torch.randn(10, 4), 2.0),
                       candidates[..., 0])


def test_median_is_torchs_and_counts_only_what_it_is_told():
    torch.manual_seed(0)
    values = torch.rand(3, 10)
    assert torch.equal(matching._median(values), values.median(dim=-1).values)  # the lower one
    values[0, :4] = 0  # not counted: the median of the other six
    values[2] = 0  # none counted: 1
    median = matching._median(values, values > 0)
    assert median[0] == values[0, 4:].median() and median[1] == values[1].median()
    assert median[2] == 1
    assert matching._median(torch.zeros(2, 0)).tolist() == [1, 1]  # (a one-frame utterance)


def spectrogram(values) -> torch.Tensor:
    """One bin: ``(1, 1, T)`` for ``fit``, frames in order."""
    return torch.tensor(values, dtype=torch.float32)[None, None]


def test_the_neighbourhood_picks_the_frame_of_the_same_place():
    """A frame of 5 between two 10s: alone it matches the target's 5 (between 0s); with one
    frame of context on each side it matches the target's 4 between two 10s."""
    query = spectrogram([10, 5, 10])[None]  # (N=1, C=1, bins=1, T=3)
    for context, middle in ((0, 5.0), (1, 4.0)):
        m = FrameMatching(1, 1, k=1, context=context)
        m.fit([spectrogram([0, 5, 0]), spectrogram([10, 4, 10])])
        assert m(query)[0, 0, 0, 1].item() == middle


def test_matching_pulls_a_noisy_output_back_to_the_real_frames():
    """Known answer: the target's frames come from a few fixed spectra; an output that is one
    of its recordings plus noise is matched back to within a fraction of the noise (each frame
    the mean of its k nearest real frames: here the same spectrum repeated)."""
    torch.manual_seed(0)
    spectra = torch.randn(5, 1, 16, 1)

    def recording(frames: int) -> torch.Tensor:  # (1, 16, frames): runs of 6 equal frames
        return spectra[torch.randint(0, 5, (frames // 6,))].repeat_interleave(6, 0) \
            .permute(1, 2, 0, 3).flatten(2)

    target = [recording(120) for _ in range(4)]
    m = FrameMatching(1, 16, k=4, context=1)
    m.fit(target)
    truth = recording(60)[None]
    noisy = truth + 0.5 * torch.randn_like(truth)
    before = (noisy - truth).abs().mean().item()
    after = (m(noisy) - truth).abs().mean().item()
    assert after < 0.25 * before  # measured: 0.40 -> 0.02


def test_an_empty_set_changes_nothing_and_a_saved_one_loads_at_its_size():
    """Before ``fit`` (and after ``reset``) no change; saved and loaded at any set size; the same
    frames under bfloat16 autocast as in float32."""
    torch.manual_seed(0)
    y = torch.randn(2, 1, 8, 30)
    m = FrameMatching(1, 8, k=3, context=2)
    assert torch.equal(m(y), y)  # before fit: no change
    m.fit([torch.randn(1, 8, 40), torch.randn(1, 8, 25)])
    assert m.bank.shape == (65, 8)
    matched = m(y)
    assert matched.shape == y.shape and not torch.allclose(matched, y)
    loaded = FrameMatching(1, 8, k=3, context=2)
    loaded.load_state_dict(m.state_dict())  # the empty (0, 8) set takes the saved length
    assert torch.equal(loaded(y), matched)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # converting with --precision bf16:
        assert torch.equal(m(y), matched)  # the distances stay float32
    m.reset()
    assert torch.equal(m(y), y)


def test_loading_a_set_that_was_never_saved_or_is_too_small_is_a_usage_error():
    """`styletx convert --set match_k=...` on a run trained without frame matching, or with a
    k larger than its set: one line that says so, not torch's report of missing tensors."""
    from styletx import UsageError

    with pytest.raises(UsageError, match="saved no matching set"):
        FrameMatching(1, 8, k=3).load_state_dict({})
    small = FrameMatching(1, 8, k=3)
    small.fit([torch.randn(1, 8, 5)])
    with pytest.raises(UsageError, match="k=6 needs at least 6 frames .* direction has 5"):
        FrameMatching(1, 8, k=6).load_state_dict(small.state_dict())


def test_the_set_is_bounded_whole_recordings_seeded(monkeypatch):
    monkeypatch.setattr(matching, "MATCH_VALUES", 400)  # 100 frames of 4 bins
    torch.manual_seed(0)
    short = [torch.randn(1, 4, n) for n in (30, 50)]
    m = FrameMatching(1, 4, k=2)
    m.fit(short)  # all of them, in order
    assert torch.equal(m.bank, torch.cat([x[0].T for x in short]))
    long = [torch.full((1, 4, 40), float(i)) for i in range(10)]
    m.fit(long)
    first = m.bank.clone()
    assert len(first) == 100
    assert len(set(first[:, 0].tolist())) == 3  # 40 + 40 + 20 frames: whole recordings first
    m.fit(long)
    assert torch.equal(m.bank, first)  # the same recordings give the same set
    with pytest.raises(ValueError, match="k=2 needs at least 2 frames"):
        FrameMatching(1, 4, k=2).fit([torch.randn(1, 4, 1)])
    with pytest.raises(ValueError, match="k >= 1"):
        FrameMatching(1, 4, k=0)


def test_keyed_matching_finds_frames_by_their_keys_and_returns_their_values():
    """The search compares keys (e.g. content codes), the output averages the frames: a query
    of keys 2, 0, 1 gives the set's frames keyed 2, 0 and 1, whatever the frames hold."""
    from styletx.audio.matching import KeyedFrameMatching

    frames = torch.tensor([[[10.0, 20.0, 30.0]], [[-1.0, -2.0, -3.0]]])  # (C=1, bins=2, T=3)
    frames = frames.permute(1, 0, 2)  # (1, 2, 3)
    keys = torch.eye(3)  # frame t keyed by the one-hot t: (key_dim=3, T=3)
    m = KeyedFrameMatching(1, 2, key_dim=3, k=1, context=0)
    with pytest.raises(ValueError, match="empty"):
        m(keys[None])
    with pytest.raises(ValueError, match="one key per frame"):
        m.fit([frames], [keys[:, :2]])
    m.fit([frames], [keys])
    query = keys[:, [2, 0, 1]][None]  # (N=1, 3, T=3)
    assert torch.equal(m(query)[0, 0], frames[0][:, [2, 0, 1]])
    reloaded = KeyedFrameMatching(1, 2, key_dim=3, k=1, context=0)
    reloaded.load_state_dict(m.state_dict())  # the saved set and keys at their size
    assert torch.equal(reloaded(query), m(query))


def test_join_follows_one_recording_where_each_frame_alone_would_hop():
    """Two recordings of the same keys, one a hair off; the query sits between them, nearer
    each in turn. Alone, each frame takes the nearer (hopping every frame); with ``join`` the
    path stays on one recording, as jumps cost more than the hair; without it k=2 averages."""
    from styletx.audio.matching import KeyedFrameMatching

    t = 20
    keys = [torch.arange(t, dtype=torch.float32)[None] + offset for offset in (0.0, 0.1)]
    frames = [torch.full((1, 2, t), value) for value in (0.0, 1.0)]  # which recording
    query = (torch.arange(t) + 0.05 + 0.001 * (-1) ** torch.arange(t)).float()[None, None]

    def matched(k, join):
        m = KeyedFrameMatching(1, 2, key_dim=1, k=k, context=0, join=join)
        m.fit(frames, keys)
        return m(query)[0, 0, 0]

    assert matched(1, 0).tolist() == [float((i + 1) % 2) for i in range(t)]  # hops every frame
    assert torch.all(matched(2, 0) == 0.5)  # the mean of both
    path = matched(2, 1.0)
    assert set(path.tolist()) in ({0.0}, {1.0})  # one recording throughout
    with pytest.raises(ValueError, match="join >= 0"):
        KeyedFrameMatching(1, 2, key_dim=1, join=-1)


def test_keyed_matching_keeps_keys_and_frames_together_when_the_set_is_cut(monkeypatch):
    """More examples than the set holds: whole examples in a seeded order, the last one cut;
    each kept frame keeps its own key (here the key of a frame is its value times -1)."""
    from styletx.audio.matching import KeyedFrameMatching

    monkeypatch.setattr(matching, "MATCH_VALUES", 10 * 2)  # 10 frames of 2 values
    examples = [torch.arange(i * 100, i * 100 + 2 * 4, dtype=torch.float32).view(1, 2, 4)
                for i in range(4)]  # 16 frames in all
    m = KeyedFrameMatching(1, 2, key_dim=2, k=1, context=0)
    m.fit(examples, [-x[0] for x in examples], seed=3)
    assert len(m.bank) == 10 and torch.equal(m.keys, -m.bank)
