"""The published numbers the experiments are measured against; data only, imports nothing.

From [AR] (Attention Residuals, arXiv 2603.15031): Table 4 (the ablations on the 436M model,
val loss) and Fig. 6 (Block AttnRes val loss by block size S, read from the figure). What they
mean and how our toy-scale runs compare is in docs/RESULTS.md.
"""

# Table 4 rows, keyed by our variant names: (the row's label, [AR] val loss). "{heads}" in a
# label is filled with the depth-softmax heads the run used.
TABLE4: dict[str, tuple[str, float]] = {
    "prenorm": ("Baseline (PreNorm)", 1.766),
    "full": ("AttnRes Full", 1.737),
    "full-input-query": ("Full w/ input-dependent query", 1.731),
    "full-static-mixing": ("Full w/ input-independent mixing", 1.749),
    "full-sigmoid": ("Full w/ sigmoid", 1.741),
    "full-no-key-norm": ("Full w/o RMSNorm", 1.743),
    "swa": ("SWA (W = 1 + 8)", 1.764),
    "block": ("AttnRes Block (S = 4)", 1.746),
    "block-multihead": ("Block w/ multihead (H = {heads})", 1.752),
    "block-no-key-norm": ("Block w/o RMSNorm", 1.750),
    "denseformer": ("DenseFormer", 1.767),
    "mhc": ("mHC (m = 4)", 1.747),
}
PAPER_BASELINE = TABLE4["prenorm"][1]

# Fig. 6: val loss by S (sublayers per block) on the same model; S = 1 is Full AttnRes
PAPER_SWEEP = {1: 1.737, 2: 1.746, 4: 1.746, 8: 1.748, 16: 1.753, 32: 1.757}
