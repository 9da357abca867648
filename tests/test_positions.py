"""The chunked position summary the size accounting uses equals the plain arrays it replaces."""

import numpy as np
import pytest
import torch

from pet_core.encoding import CORE_LAYOUTS, Positions, StoredTensor, filler_counts, gaps_of, layout_options, \
    nonzero_positions


def _cases():
    g = torch.Generator().manual_seed(0)
    yield torch.zeros(1000)
    yield torch.randn(1000, generator=g)
    for keep in (0.5, 0.05, 0.001):
        w = torch.randn(300_000, generator=g)
        yield w * (torch.rand(300_000, generator=g) < keep)
    far = torch.zeros(400_000)
    far[[3, 70_000, 70_001, 399_999]] = 1.0                 # gaps above 2^16, across chunk edges
    yield far


@pytest.mark.parametrize("chunk", [7, 1 << 12, 1 << 20])
def test_positions_equal_the_arrays(chunk, monkeypatch):
    monkeypatch.setattr(Positions, "CHUNK", chunk)
    for values in _cases():
        pos = nonzero_positions(values)
        summary = Positions(values)
        assert summary.size == pos.size
        assert np.array_equal(summary.array(), pos)
        assert np.array_equal(summary.fillers(), filler_counts(gaps_of(pos)))
        for b in (1, 4, 32):
            t = StoredTensor("weight", values, b)
            assert layout_options(t, summary).keys() == layout_options(t, pos).keys()
            assert all(layout_options(t, summary)[k][1] == layout_options(t, pos)[k][1]
                       for k in layout_options(t, pos))
    assert len(CORE_LAYOUTS) == 3


def test_freed_memory_goes_back_on_glibc():
    import ctypes.util

    from pet_core.memory import release_freed_memory

    assert release_freed_memory() == bool(ctypes.util.find_library("c"))
