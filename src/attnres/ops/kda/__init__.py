"""Kimi Delta Attention (KDA): the recurrence (`naive.py`, the definition) and the chunkwise
WY / UT algorithm (`chunk.py`, for training and prefill); `kda_decode_step` advances one token.
All take q, k: [B, T, H, K], v: [B, T, H, V], g: [B, T, H, K] (log decay), beta: [B, T, H]."""

from attnres.ops.kda.chunk import chunk_kda
from attnres.ops.kda.naive import kda_decode_step, recurrent_kda

__all__ = ["chunk_kda", "recurrent_kda", "kda_decode_step"]
