"""Pipeline parallelism for the decoder, with AttnRes cross-stage caching
(docs/THEORY.md#cross-stage-caching).

The schedule is PyTorch's: `torch.distributed.pipelining.PipelineStage` per chunk and
`ScheduleInterleaved1F1B` (V > 1) or `Schedule1F1B` (V = 1) over them. That library moves one
tuple of tensors from stage c to stage c+1 and returns one gradient per tensor; it knows nothing
about state a rank keeps *between* its virtual stages. What AttnRes needs on top, and all this
module adds, is the block payload:

- Split (`split_stages`). The L sublayers are cut into C = P·V contiguous chunks (pp_plan's
  sizes; a cut may fall between a layer's mixer and FFN). Chunk c runs on rank (c−1) mod P in
  virtual stage ⌈c/P⌉ − 1; the first chunk also embeds, the last does the final read, norm and
  head. The model's own modules are shared, not copied, and its own forward pieces run them
  (`DecoderLM.embed`, `DecoderLayer.mixer_sublayer` / `ffn_sublayer`, `DecoderLM.head`): this
  module adds only the payload between chunks.
- Payload. Chunk c sends `(packed, header)`: packed = [count(+1), B, T, d] holds the blocks the
  receiver lacks and, when a block is open, the partial sum (PreNorm: just the hidden state);
  header = (first_block_id, count, has_partial) as int64. The receiver checks both against the
  static plan.
- Cache. With `cache=True` each rank keeps, per micro-batch, the blocks its earlier virtual
  stages received (rank 0 also b_0), as detached leaves with requires_grad, made once per
  received payload; only the increments travel. The micro-batch id reaches the chunks as a
  keyword tensor chunked by the schedule (`microbatch=arange(M)`). Message shapes are given
  to the stages up front (static mode): the library's shape inference would run chunks on
  placeholder data.
- Gradients. A later virtual stage leaves its gradients for a cached block on that leaf (its
  `.grad` is the grad cache). A hook on the tensor the earlier chunk received (or, for b_0,
  computed) adds it, so the earlier transition's gradient message carries it, and nothing is
  ever backpropagated through one graph twice. Backward runs a micro-batch's chunks in reverse
  order (data dependency), so the grad cache is complete when the hook fires.

Restrictions: residual kinds prenorm, full and block (no depth window); each rank builds the
whole model from the same seed and keeps its chunks (fine at our sizes).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleInterleaved1F1B

from attnres import units
from attnres.parallel.pp_plan import PPPlan, pp_plan

SUPPORTED = ("prenorm", "full", "block")

Header = tuple[int, int, int]   # (first_block_id, count, has_partial)


class _Sublayer(nn.Module):
    """Sublayer `sub` (0-based) of a decoder layer, so that a chunk boundary may fall inside a
    layer: it holds that half's modules (its read, PreNorm and mixer or FFN, so the chunk owns
    their parameters) and runs the layer's own half (`DecoderLayer.mixer_sublayer` or
    `ffn_sublayer`)."""

    def __init__(self, layer: nn.Module, sub: int):
        super().__init__()
        self.sub = sub
        is_mixer = sub % 2 == 0
        self.read = layer.res_mixer if is_mixer else layer.res_ffn   # None for PreNorm
        self.norm = layer.attn_norm if is_mixer else layer.ffn_norm
        self.f = layer.self_attn if is_mixer else layer.mlp
        self._run = layer.mixer_sublayer if is_mixer else layer.ffn_sublayer  # not a submodule

    def forward(self, stream) -> None:
        self._run(stream)


class BlockCache:
    """One rank's cross-stage cache: micro-batch -> cached block leaves [b_0, b_1, ...]."""

    def __init__(self):
        self.blocks: dict[object, list[torch.Tensor]] = {}

    def keep(self, mb, blocks: list[torch.Tensor]) -> None:
        self.blocks[mb] = blocks

    def get(self, mb, pop: bool) -> list[torch.Tensor]:
        return self.blocks.pop(mb) if pop else self.blocks[mb]


def _add_cached_grad(leaf: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return grad if leaf.grad is None else grad + leaf.grad


def _cache_leaf(block: torch.Tensor) -> torch.Tensor:
    """A detached leaf for `block`; the gradient later stages leave on it is added to the
    gradient of `block` when the chunk that owns `block` runs its backward."""
    leaf = block.detach().requires_grad_(block.requires_grad)
    if block.requires_grad:
        block.register_hook(partial(_add_cached_grad, leaf))
    return leaf


class _SideLoss(torch.autograd.Function):
    """Identity on `out`; in backward it gives a chunk-local loss (an MoE balance loss) the
    gradient `scale`, so intermediate stages can train terms that never reach the head."""

    @staticmethod
    def forward(ctx, out, aux, scale):
        ctx.scale, ctx.aux_meta = scale, (aux.shape, aux.dtype, aux.device)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, device = ctx.aux_meta
        return grad, torch.full(shape, ctx.scale, dtype=dtype, device=device), None


def payload_header(plan: PPPlan, t: int, cache: bool, prenorm: bool = False) -> Header:
    """(first_block_id, count, has_partial) of transition t → t+1 (1-based `t`).

    has_partial is 0 when a block closes at the sender's last sublayer (eager sealing leaves
    no open block); the PreNorm payload is only the hidden state, counted as the partial."""
    if prenorm:
        return 0, 0, 1
    tr = plan.transitions[t - 1]
    first, count, _ = tr.header(cache)
    return first, count, int(tr.src.sublayers[-1] not in plan.block_closes)


class PipelineChunk(nn.Module):
    """Chunk `index` (1-based) of the plan: its sublayers (+ embedding / final read and head)."""

    def __init__(self, model: nn.Module, plan: PPPlan, index: int, cache: BlockCache | None,
                 n_microbatches: int = 1):
        super().__init__()
        spec = plan.chunks[index - 1]
        self.index, self.rank, self.vstage = index, spec.rank, spec.vstage
        self.is_first, self.is_last = index == 1, index == plan.n_chunks
        self.n_vstages, self.own_blocks = plan.V, plan.cache_own_blocks
        self.prenorm = model.residual.kind == "prenorm"
        self.embed_tokens = model.embed_tokens if self.is_first else None
        self.sublayers = nn.ModuleList(_Sublayer(model.layers[(sub - 1) // 2], sub - 1)
                                       for sub in spec.sublayers)
        if self.is_last:
            self.final_res, self.norm, self.lm_head = model.final_res, model.norm, model.lm_head
        self._residual = model.residual
        self._reads = model.reads()               # a plain list: the stream indexes it by sub
        self._embed, self._model_head = model.embed, model.head   # the model's own pieces
        self.d_model = model.embed_tokens.embedding_dim
        emb, state = model.embed_tokens.weight.dtype, model.residual.state_dtype
        self.state_dtype = emb if state is None else torch.promote_types(state, emb)
        self._cache = None if self.prenorm else cache
        self.side_loss_scale = 1.0 / n_microbatches
        caching = cache is not None
        self.header_in = None if self.is_first else \
            payload_header(plan, index - 1, caching, self.prenorm)
        self.header_out = None if self.is_last else \
            payload_header(plan, index, caching, self.prenorm)
        self.sent: int | None = None              # block-vectors sent for micro-batch 0
        self.aux: list[torch.Tensor] = []         # side losses of this step's micro-batches

    def forward(self, *inputs: torch.Tensor, microbatch: torch.Tensor):
        mb = int(microbatch.reshape(-1)[0])
        if self.is_first:
            stream = self._embed(inputs[0])
            if self._cache is not None and self.n_vstages > 1:
                self._cache.keep(mb, [_cache_leaf(stream.completed[0])])
        else:
            stream = self._receive(mb, *inputs)
        for s in self.sublayers:
            s(stream)
        if self.is_last:
            return self._with_side_losses(self._head(stream))
        packed, header = self._pack(mb, stream)
        return self._with_side_losses(packed), header

    def _with_side_losses(self, out: torch.Tensor) -> torch.Tensor:
        """Attach the losses this chunk's modules set in forward (MoE balance, `aux_loss`)."""
        aux = [getattr(s.f, "aux_loss", None) for s in self.sublayers]
        aux = [a for a in aux if isinstance(a, torch.Tensor)]
        if not aux or not torch.is_grad_enabled():
            return out
        total = sum(aux)
        self.aux.append(total.detach())
        return _SideLoss.apply(out, total, self.side_loss_scale)

    def _receive(self, mb, packed: torch.Tensor, header: torch.Tensor):
        first, count, has_partial = self.header_in
        got = tuple(header.tolist())
        if packed.shape[0] != count + has_partial or got != self.header_in:
            raise RuntimeError(f"pp: chunk {self.index} expected header {self.header_in} and "
                               f"{count + has_partial} packed tensors, got {got} and "
                               f"{packed.shape[0]}")
        parts = list(packed.unbind(0))
        part = parts.pop() if has_partial else None
        if self.prenorm:
            return self._residual.stream(part, self._reads)
        caching = self._cache is not None
        held = self._cache.get(mb, pop=self.vstage == self.n_vstages - 1) \
            if caching and self.vstage > 0 else []
        if len(held) != first:
            raise RuntimeError(f"pp: chunk {self.index} holds {len(held)} blocks, header says "
                               f"the increment starts at b{first}")
        blocks = held + parts
        if caching and self.vstage < self.n_vstages - 1:
            self._cache.keep(mb, held + [_cache_leaf(b) for b in parts])
        stream = self._residual.stream(blocks[0], self._reads)
        stream.completed, stream.partial = blocks, part
        return stream

    def _pack(self, mb, stream) -> tuple[torch.Tensor, torch.Tensor]:
        first, count, has_partial = self.header_out
        if self.prenorm:
            send, part = [], stream.hidden
        else:
            send, part = stream.completed[first:], stream.partial
            if self.own_blocks and self._cache is not None and self.vstage < self.n_vstages - 1:
                held = self._cache.get(mb, pop=False)        # this chunk's inputs
                closed = stream.completed[len(held):]
                self._cache.keep(mb, held + [_cache_leaf(b) for b in closed])
        if len(send) != count or (part is not None) != bool(has_partial):
            raise RuntimeError(f"pp: chunk {self.index} would send {len(send)} blocks "
                               f"(partial: {part is not None}), the plan says {self.header_out}")
        packed = torch.stack(send + ([part] if part is not None else []))
        if mb == 0:
            self.sent = packed.shape[0] - has_partial
        return packed, torch.tensor(self.header_out, dtype=torch.int64, device=packed.device)

    def _head(self, stream) -> torch.Tensor:
        logits = self._model_head(stream)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))   # as DecoderLM's loss

    # static message shapes for micro-batches [b, T] (meta tensors: only their metadata is read)

    def example_inputs(self, b: int, T: int) -> tuple[torch.Tensor, ...]:
        if self.is_first:
            return (torch.empty(b, T, dtype=torch.int64, device="meta"),)
        return self._message(self.header_in, b, T)

    def example_outputs(self, b: int, T: int) -> tuple[torch.Tensor, ...]:
        if self.is_last:
            dtype = torch.promote_types(self.lm_head.weight.dtype, torch.float32)
            return (torch.empty(b, T, self.lm_head.out_features, dtype=dtype, device="meta",
                                requires_grad=True),)
        return self._message(self.header_out, b, T)

    def _message(self, header: Header, b: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, count, has_partial = header
        packed = torch.empty(count + has_partial, b, T, self.d_model, dtype=self.state_dtype,
                             device="meta", requires_grad=True)
        return packed, torch.empty(3, dtype=torch.int64, device="meta")


def split_stages(model: nn.Module, P: int, V: int, cache: bool = True,
                 cache_own_blocks: bool = False, chunk_sizes: Sequence[int] | None = None,
                 n_microbatches: int = 1) -> tuple[list[PipelineChunk], PPPlan]:
    """Cut a `DecoderLM` into C = P·V chunks, from outside the model.

    Returns:
        (chunks, plan): chunk c (1-based) is `chunks[c-1]`, for rank (c−1) mod P. Chunks of one
        rank share one `BlockCache`. Every model parameter belongs to exactly one chunk.
    """
    kind = model.residual.kind
    if kind not in SUPPORTED or (kind != "prenorm" and model.residual.options.window is not None):
        raise ValueError(f"pp: residual {model.residual.describe()} is not supported; "
                         f"use one of {', '.join(SUPPORTED)} without a depth window")
    L = units.sublayers_from_layers(len(model.layers))
    closes = [L] if kind == "prenorm" else units.block_closes(L, model.residual.block_size)
    plan = pp_plan(P, V, closes, L, cache=cache, cache_own_blocks=cache_own_blocks,
                   chunk_sizes=chunk_sizes)
    caches = [BlockCache() if cache else None for _ in range(P)]
    chunks = [PipelineChunk(model, plan, c, caches[(c - 1) % P], n_microbatches)
              for c in range(1, plan.n_chunks + 1)]
    owned = [id(p) for ch in chunks for p in ch.parameters()]
    if sorted(owned) != sorted(id(p) for p in model.parameters()):
        raise ValueError("pp: the chunks do not partition the model's parameters "
                         "(a module outside the embedding, layers and head?)")
    return chunks, plan


def _cross_entropy(n_microbatches: int):
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), target.flatten()) / n_microbatches
    return loss


class PipelineRunner:
    """One rank's part of a pipelined `DecoderLM`, inside an initialised process group.

    Args:
        model: the whole model, built identically (same seed) on every rank.
        P: ranks of `group`. V: virtual stages per rank. cache: cross-stage caching
            (docs/THEORY.md#cross-stage-caching).
        n_microbatches: M; the batch is split along dim 0 into M equal micro-batches.
        cache_own_blocks: also keep the blocks a rank's earlier chunks closed.
        chunk_sizes: explicit sublayers per chunk (default: pp_plan's equal split).
        group: the pipeline process group (default: the world).
    """

    def __init__(self, model: nn.Module, P: int, V: int = 1, cache: bool = True,
                 n_microbatches: int = 1, cache_own_blocks: bool = False,
                 chunk_sizes: Sequence[int] | None = None, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        if dist.get_world_size(group) != P:
            raise ValueError(f"pp: P = {P} but the process group has "
                             f"{dist.get_world_size(group)} ranks")
        self.model, self.P, self.V, self.M = model, P, V, n_microbatches
        all_chunks, self.plan = split_stages(model, P, V, cache, cache_own_blocks, chunk_sizes,
                                             n_microbatches)
        self.chunks = [ch for ch in all_chunks if ch.rank == self.rank]
        self.has_first, self.has_last = self.chunks[0].is_first, self.chunks[-1].is_last
        self.prenorm = model.residual.kind == "prenorm"
        self._own = {id(p) for ch in self.chunks for p in ch.parameters()}
        self._schedules: dict[tuple[int, ...], object] = {}

    def schedule(self, batch_shape: Sequence[int]):
        """The schedule for batches of `batch_shape` [B, T], built on first use.

        Stages get their message shapes up front (static mode), so the library never runs a
        chunk on placeholder data to infer them, which would pollute the caches."""
        key = tuple(batch_shape)
        if key not in self._schedules:
            B, T = key
            if B % self.M:
                raise ValueError(f"pp: batch size {B} is not divisible by {self.M} micro-batches")
            device = next(self.model.parameters()).device
            stages = [PipelineStage(ch, ch.index - 1, self.plan.n_chunks, device,
                                    input_args=ch.example_inputs(B // self.M, T),
                                    output_args=ch.example_outputs(B // self.M, T),
                                    group=self.group) for ch in self.chunks]
            loss_fn = _cross_entropy(self.M)
            if self.V > 1:
                self._schedules[key] = ScheduleInterleaved1F1B(stages, self.M, loss_fn=loss_fn,
                                                               scale_grads=False)
            else:
                self._schedules[key] = Schedule1F1B(stages[0], self.M, loss_fn=loss_fn,
                                                    scale_grads=False)
        return self._schedules[key]

    # --- parameters ---------------------------------------------------------------------------

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """This rank's stage parameters, under their names in the whole model."""
        return [(n, p) for n, p in self.model.named_parameters() if id(p) in self._own]

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def global_grad_norm(self) -> float:
        """‖g‖₂ over every stage's parameters (one all-reduce of the squared norms)."""
        params = [p for p in self.parameters() if p.grad is not None]
        sq = sum((p.grad.detach().double().pow(2).sum() for p in params),
                 torch.zeros((), dtype=torch.float64, device=self._device()))
        dist.all_reduce(sq, group=self.group)
        return math.sqrt(sq.item())

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Scale every stage's gradients as `torch.nn.utils.clip_grad_norm_` would on the whole
        model; returns the global norm before clipping."""
        norm = self.global_grad_norm()
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0 and math.isfinite(norm):
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.mul_(coef)
        return norm

    # --- steps --------------------------------------------------------------------------------

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, int]]:
        """Forward and backward of batch (x, y) [B, T] over M micro-batches; gradients accumulate
        into this rank's stage parameters. Every rank passes the same x and y.

        Returns:
            (loss, stats): the mean loss of the batch, the same on every rank, and
            `pp_block_vectors_sent` (completed-block d-vectors per token over all transitions of
            one micro-batch, b_0 counted, partials not), `pp_block_vectors_planned` (the plan's
            total for this mode), `pp_peak_block_vectors` (the largest single payload).
        """
        for ch in self.chunks:
            ch.sent, ch.aux = None, []
        losses: list[torch.Tensor] = []
        self.schedule(x.shape).step(*self._args(x), target=self._target(y), losses=losses,
                                    return_outputs=False, microbatch=torch.arange(self.M))
        self._check_cache_empty()
        side = sum(a.item() for ch in self.chunks for a in ch.aux) / self.M
        loss = sum(v.item() for v in losses) + side
        # one all-reduce: the loss (last rank) and the block-vectors each transition sent
        totals = torch.zeros(self.plan.n_chunks, dtype=torch.float64)
        totals[0] = loss
        for ch in self.chunks:
            if not ch.is_last:
                totals[ch.index] = ch.sent
        totals = totals.to(self._device())
        dist.all_reduce(totals, group=self.group)
        sent = [int(v) for v in totals[1:].tolist()]
        return totals[0].item(), {"pp_block_vectors_sent": sum(sent),
                                  "pp_block_vectors_planned": 0 if self.prenorm else self.plan.total,
                                  "pp_peak_block_vectors": max(sent, default=0)}

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward-only mean loss of (x, y), the same on every rank (side losses excluded)."""
        losses: list[torch.Tensor] = []
        self.schedule(x.shape).eval(*self._args(x), target=self._target(y), losses=losses,
                                    microbatch=torch.arange(self.M))
        self._check_cache_empty()
        total = torch.tensor([sum(v.item() for v in losses)], dtype=torch.float64,
                             device=self._device())
        dist.all_reduce(total, group=self.group)
        return total.item()

    def _args(self, x: torch.Tensor) -> tuple:
        return (x,) if self.has_first else ()

    def _target(self, y: torch.Tensor) -> torch.Tensor | None:
        return y if self.has_last else None

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check_cache_empty(self) -> None:
        cache = self.chunks[0]._cache
        left = list(cache.blocks) if cache is not None else []
        if left:
            raise RuntimeError(f"pp: rank {self.rank} kept cached blocks of micro-batches {left} "
                               f"after the step (a schedule ran a virtual stage twice?)")


# --- demo entry point: python -m attnres.parallel.pipeline --pp 2 --virtual-stages 2 ---------

def _demo_rank(rank: int, args: argparse.Namespace) -> None:
    from attnres.config import ResidualConfig
    from attnres.models.dense import DenseLM, dense_config
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=args.pp)
    torch.manual_seed(args.seed)
    cfg = dense_config("tiny", n_layers=args.layers, d_model=32, n_heads=2, n_kv_heads=1,
                       d_ff=64, vocab_size=64, residual=ResidualConfig(args.residual, block_size=args.block_size
                                                             if args.residual == "block" else 0))
    model = DenseLM(cfg)
    runner = PipelineRunner(model, args.pp, args.virtual_stages, cache=args.pp_cache,
                            n_microbatches=args.microbatches)
    opt = torch.optim.AdamW(runner.parameters(), lr=3e-3)
    if rank == 0:
        print(runner.plan.table() if args.residual != "prenorm" else "prenorm: hidden state only")
    # one fixed batch of random tokens, the same on every rank: the loss falls as it is learnt
    x = torch.randint(0, cfg.vocab_size, (args.batch_size, 33),
                      generator=torch.Generator().manual_seed(args.seed))
    x, y = x[:, :-1], x[:, 1:]
    for step in range(1, args.steps + 1):
        loss, stats = runner.train_step(x, y)
        norm = runner.clip_grad_norm_(1.0)
        opt.step()
        runner.zero_grad()
        if rank == 0:
            print(f"step {step}: loss {loss:.4f} grad_norm {norm:.3f} "
                  + " ".join(f"{k} {v}" for k, v in stats.items()))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m attnres.parallel.pipeline",
                                description="Pipelined training of a tiny dense model (gloo).")
    p.add_argument("--pp", type=int, default=2, help="P: pipeline ranks")
    p.add_argument("--virtual-stages", type=int, default=2, help="V: virtual stages per rank")
    p.add_argument("--no-pp-cache", dest="pp_cache", action="store_false",
                   help="send every block each time (Eq. 7) instead of increments (Eq. 8)")
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--residual", default="block", choices=SUPPORTED)
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if "RANK" in os.environ:                  # under torchrun
        dist.init_process_group("gloo")
        _demo_rank(dist.get_rank(), args)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    torch.multiprocessing.spawn(_demo_rank, args=(args,), nprocs=args.pp)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
