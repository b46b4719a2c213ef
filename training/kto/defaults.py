"""Every default of the engine and of the training policy, named once.

Two sets on purpose (SPEC §1):
- ``TRL_*``: the engine's command-line flags carry the names of TRL's ``KTOConfig`` fields, so
  they default to TRL's values — a TRL user's command line trains as it does in TRL.
- ``PAPER_*``: the KTO paper's recommended settings. The training policy (and so the loop,
  ``make demo`` and the benches that stand for "what Prospect does") passes them explicitly.

Everything else in Prospect (the CLI, ``TrainConfig``, the Django settings, the policy model,
the README's configuration table) reads its defaults from here. Imports nothing.
"""

from __future__ import annotations

# --- The paper's recommendations (shared/paper/kto-paper.txt) --------------------------------
PAPER_BETA = 0.1
PAPER_LEARNING_RATE = 5e-6
PAPER_EFFECTIVE_BATCH = 32  # examples per optimizer step; the paper recommends 8-128
PAPER_MICROBATCH = 8  # per-device examples; z0 needs >= 2
PAPER_GRADIENT_ACCUMULATION_STEPS = PAPER_EFFECTIVE_BATCH // PAPER_MICROBATCH  # on one process
# λ_D·n_D / (λ_U·n_U) aimed at when the data lies outside [1, 3/2] (paper Eq. 7; 4/3 was its
# best setting on HH, SHP and OASST).
TARGET_RATIO = 4 / 3
BALANCED_RATIO_BAND = (1.0, 1.5)

# --- TRL's KTOConfig / TrainingArguments defaults (trl 1.16, transformers 5.24) ------------
TRL_BETA = 0.1
TRL_LEARNING_RATE = 1e-6
TRL_PER_DEVICE_TRAIN_BATCH_SIZE = 8
TRL_GRADIENT_ACCUMULATION_STEPS = 1
TRL_NUM_TRAIN_EPOCHS = 3.0
TRL_MAX_STEPS = -1
TRL_MAX_LENGTH = 1024
TRL_WARMUP_RATIO = 0.0
TRL_WEIGHT_DECAY = 0.0
TRL_MAX_GRAD_NORM = 1.0
TRL_SEED = 42
TRL_DESIRABLE_WEIGHT = 1.0
TRL_UNDESIRABLE_WEIGHT = 1.0
TRL_LOGGING_STEPS = 10  # KTOConfig overrides TrainingArguments' 500
TRL_SAVE_STEPS = 500
TRL_GRADIENT_CHECKPOINTING = True  # KTOConfig overrides TrainingArguments' False
TRL_DISABLE_DROPOUT = True

# --- What the training loop passes for the flags the paper leaves open -----------------------
# (the values the loop trained with before the CLI adopted TRL's defaults)
LOOP_WARMUP_RATIO = 0.1
LOOP_LOGGING_STEPS = 1  # the run page plots every step
LOOP_SAVE_STEPS = 0  # no intermediate checkpoints: runs are short and restarted from scratch
# PROSPECT_TRAIN_CHECKPOINTING's default: the worker's GPU decides, measured at each run's start
# (--checkpoint-policy auto: no checkpointing where it fits, else elementwise, else layer).
LOOP_CHECKPOINTING = "auto"

# --- The paper's other baselines (§3.3, Appendix C; values from the paper's code) ------------
SLIC_DELTA = 1.0  # the calibration margin δ
SLIC_REGULARIZATION = 0.1  # λ_reg
PPO_CLIP_EPSILON = 0.5  # "clipping less conservatively than we traditionally would"
CSFT_CONTROL_TOKENS = ("<|good|>", "<|bad|>")  # (desirable, undesirable), Appendix C

# --- Engine speed (trainer.TrainConfig; none changes the numbers) ------------------------------
AUTO = -1  # "choose for the device" for the options below
# Tokens per forward call with gradient (no-grad calls take twice as many).
TOKEN_BUDGET_CPU = 0  # one call per microbatch: bigger calls gained no time on CPU and cost memory (BENCHMARKS.md)
TOKEN_BUDGET_CUDA = 16384  # about 4 microbatches of 8 × 450 tokens: one launch-heavy step in one call
LOGITS_CHUNK_ELEMENTS = 1 << 25  # LM-head chunk: positions × vocabulary rows (128 MiB of fp32 logits)

# What --gradient-checkpointing recomputes in backward (TrainConfig.checkpoint_policy):
#   layer        every op of each decoder layer (TRL's): only the layer's input is kept
#   elementwise  only the element-wise ops (norms, rotary, activations, residual adds, casts); the
#                outputs of matrix products and attention kernels are kept. Those ops hold all of
#                a layer's FLOPs, the element-wise ones much of its saved activations (fp32 norm
#                internals, the MLP's activation), so about half the memory of no checkpointing
#                for a recompute that costs no matmul (bench/activation_memory.py).
CHECKPOINT_POLICIES = ("layer", "elementwise")

# --- Engine safety -----------------------------------------------------------------------------
MAX_NONFINITE_STEPS = 5  # consecutive skipped (non-finite) steps before a run aborts

# --- Data --------------------------------------------------------------------------------------
SNAPSHOT_HOLDOUT = 0.1  # share of prompts held out of training (split by prompt)

# The loss names, in the order of training/kto/loss.py's VARIANTS (which checks it matches). Kept
# here, torch-free, so the web process can offer them as choices without importing torch.
LOSS_TYPES = ("kto", "no_z0", "concave", "risk_neutral", "reference_free", "sft", "dpo", "slic", "ppo_offline", "csft")
