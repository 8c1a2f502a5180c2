"""`depth_statistics`: the numbers behind the Fig. 5 / Fig. 8 table, on hand-made analyses."""

import pytest

from attnres.analysis.depth import depth_statistics


def _analysis(weights=None):
    return {"stream_rms": [1.0, 2.0, 4.0, 8.0], "output_rms": [1.0, 1.0, 1.0, 2.0],
            "grad_norm": [4.0, 1.0, 1.0, 2.0], "depth_weights": weights}


def test_profiles_of_a_baseline():
    stats = depth_statistics(_analysis())
    assert stats["stream_growth"] == 8.0 and stats["stream_increasing"] == 1.0
    assert stats["output_growth"] == 2.0 and stats["grad_spread"] == 4.0
    assert stats["grad_early"] == pytest.approx(4.0 / (4.0 / 3.0))  # first of 4 vs mean of the rest
    assert all(stats[k] is None for k in ("locality", "latest_mixer", "latest_ffn",
                                          "embedding_mixer", "embedding_ffn"))


def test_depth_attention_numbers_split_reads_by_the_sublayer_they_feed():
    weights = [[1.0],                     # read 0 (before the first mixer): one source, ignored
               [0.2, 0.8],                # before the FFN: peaked on the latest source
               [0.5, 0.3, 0.2],           # before a mixer: peaked on the embedding
               [0.1, 0.1, 0.1, 0.7],      # before an FFN
               [0.4, 0.2, 0.2, 0.1, 0.1]]  # the final read: counts for locality only
    stats = depth_statistics(_analysis(weights))
    assert stats["locality"] == 0.5
    assert stats["latest_mixer"] == pytest.approx(0.2) and stats["embedding_mixer"] == pytest.approx(0.5)
    assert stats["latest_ffn"] == pytest.approx(0.75) and stats["embedding_ffn"] == pytest.approx(0.15)
    stream_down = dict(_analysis(weights), stream_rms=[4.0, 2.0, 3.0, 1.0])
    assert depth_statistics(stream_down)["stream_increasing"] == pytest.approx(1 / 3)
