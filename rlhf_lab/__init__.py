"""rlhf-lab: RLHF step by step (SFT, a reward model from rankings, PPO) on a small GPT-2 with LoRA."""

__version__ = "0.1.0"

from .utils import LabError, fast_mode, pick_device, set_seed  # noqa: F401
