"""On-policy and mixed distillation: the student (or, for sequence-level KD, the teacher) writes the completion of
each prompt at training time and the teacher grades every token of it (GKD's ``lmbda`` / ``seq_kd``).

``settings`` holds the config fields, ``batches`` the pure tensor functions (prompt boundary, masks),
``generation`` the sampling, ``mixing`` which micro-batches are completed and the swap, ``completions_log`` what the
student writes, every ``logging_steps``.
"""

from hf_distill.on_policy.mixing import (
    OnPolicyMixer,
    attach_on_policy,
    refuse_cache_when_generating,
)
from hf_distill.on_policy.settings import OnPolicyArguments

__all__ = ["OnPolicyArguments", "OnPolicyMixer", "attach_on_policy", "refuse_cache_when_generating"]
