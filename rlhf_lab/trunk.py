"""The shared trunk of stage 3: one copy of the backbone, the adapters on it, one forward pass, sampling.

PPO, RLOO, GRPO (ppo.py) and DPO (dpo.py) all train the same way on one PeftModel:
  - the SFT model with its adapter merged is a plain GPT-2, the only copy of the backbone (build_trunk);
  - the adapter "policy" is a fresh LoRA on it (add_policy_adapter): B = 0, so the policy starts as
    the SFT model;
  - the adapter "reward" of stage 2 (frozen) is read by the reward model's head;
  - the trunk with every adapter off is the frozen reference (use_adapter(model, None)).
forward_response gives the logits at the response positions of a left-padded prompt + right-padded
response batch, the one code path for rollouts, updates and evaluation (so the policy's ratio is
exactly 1 on the first minibatch); sample_responses is the KV-cache sampling loop of the rollouts.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file

from .generation import Rollout, encode_prompts, first_eos_mask
from .reward_model import using_adapter
from .utils import LabError, autocast

POLICY = "policy"  # the policy's adapter name on the shared trunk
REWARD = "reward"  # the reward model's adapter name (reward_model.ADAPTER_NAME)



def build_trunk(sft: str | Path, base: str | None = None, device="auto"):
    """(trunk, tokenizer): the pretrained model with the SFT adapter merged in, a plain transformers model.

    Merged in place (merge_and_unload), not copied: this trunk is the only copy of the backbone.
    """
    from .sft import load_sft

    peft_sft, tokenizer = load_sft(sft, device=device, base=base)
    trunk = peft_sft.merge_and_unload()  # W + (alpha / r) B A, adapter layers removed
    trunk.eval()
    return trunk, tokenizer


def add_policy_adapter(trunk, cfg) -> PeftModel:
    """Wrap the trunk (in place, as peft does) with the fresh LoRA adapter "policy"; only it trains.

    cfg: a stage config with the LoRA fields r, lora_alpha, target_modules and fused_gelu (PPOConfig,
    DPOConfig).

    LoRA's B starts at 0, so the policy starts exactly as the SFT model: on the first step the KL to
    the reference is 0 and the PPO ratio is 1.
    """
    from .sft import lora_adapter
    if cfg.fused_gelu:
        use_fused_gelu(trunk)
    model = lora_adapter(trunk, cfg.target_modules, cfg.r, cfg.lora_alpha, lora_dropout=0.0,  # dropout off in RL
                         adapter_name=POLICY)
    model.eval()
    return model


def use_fused_gelu(model) -> int:
    """Swap GPT-2's gelu_new modules for transformers' GELUTanh, in place; returns how many.

    Both compute 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). gelu_new spells it out in 8 PyTorch
    ops, and autograd keeps several of their results for the backward pass; GELUTanh is torch's fused
    gelu(approximate="tanh"), which keeps only its input (transformers: "equivalent to NewGELU ... but
    much faster", equal up to rounding). In the PPO update that is ~40% less activation memory.
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    swaps = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is NewGELUActivation]
    for parent, name in swaps:
        setattr(parent, name, GELUTanh())
    return len(swaps)


@contextmanager
def use_adapter(model, adapter: str | None):
    """Run `model` with one adapter active (None: all adapters off, i.e. the reference), then restore.

    A named adapter goes through reward_model.using_adapter, the one place that switches adapters on
    the shared trunk. peft's set_adapter makes the chosen adapter trainable and freezes the others, and
    leaving disable_adapter() makes the active one trainable: neither may leak out of a scoring call in
    the middle of a PPO step, so every requires_grad flag is put back as it was.
    """
    if not isinstance(model, PeftModel):
        yield model
        return
    if adapter is not None:
        with using_adapter(model, adapter):
            yield model
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with model.disable_adapter():
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def causal_lm(model):
    """The transformers model inside a PeftModel (peft injects its layers into it, in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def forward_response(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, query_length: int,
                     value_head: torch.nn.Module | None = None,
                     logits: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (and values) at the response positions, from one pass through the trunk.

    input_ids, attention_mask # (B, Tq + T): left-padded query, then the right-padded response
    returns logits            # (B, T, V): logits[:, t] is the distribution that produced response[:, t]
            values            # (B, T): V(s_t), the state before response token t (None without a head)
    Runs whichever adapter is active. The lm head is applied to the T response positions only.
    logits=False returns the lm head's input # (B, T, C) in place of the logits, for
    ppo_math.logprobs_from_hidden with lm_head_weight(model), which never holds the logits whole.
    """
    lm = causal_lm(model)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, Tq + T) real tokens only
    with autocast(input_ids.device):  # bf16 on a GPU that has it; logprobs_from_logits upcasts
        hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state    # (B, Tq + T, C), after the final layer norm
        hidden = hidden[:, query_length - 1:-1].contiguous()         # (B, T, C): position i predicts token i + 1
        out = lm.get_output_embeddings()(hidden) if logits else hidden  # (B, T, V) or (B, T, C)
    values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1) if value_head is not None else None  # (B, T)
    return out, values


def lm_head_weight(model) -> torch.Tensor:
    """The LM head's weight # (V, C) (GPT-2's is the token embedding, tied), for logprobs_from_hidden."""
    head = causal_lm(model).get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise LabError("internal: logprobs_from_hidden takes an LM head without a bias (GPT-2's has none).")
    return head.weight


class ResponseForward(torch.nn.Module):
    """forward_response(model, ..., value_head) as one module: the unit that Accelerate wraps in DDP when
    several processes train (distributed.prepare), so that the gradients of the policy's adapter and of the
    value head are all-reduced. It holds no weights of its own: the same PeftModel and head, registered here
    too. Rollouts, the reference and the reward model call the trunk directly, without gradients."""

    def __init__(self, model, value_head: torch.nn.Module | None = None):
        super().__init__()
        self.model = model
        self.value_head = value_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, query_length: int, logits: bool = True):
        return forward_response(self.model, input_ids, attention_mask, query_length, self.value_head, logits)


def sample_from(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of `probs` # (B, V), drawn by inverting the CDF with one uniform number per row.

    The same distribution as torch.multinomial(probs, 1), which draws one exponential number per
    vocabulary entry: at B = 64 and V ~ 3k that was ~35% of the tiny model's sampling time.
    returns # (B,) long
    """
    cdf = probs.cumsum(-1)                                                   # (B, V)
    u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]  # (B, 1) in [0, total)
    # right=True: the first index whose cdf exceeds u, so a token of probability 0 is never drawn
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)  # (B,)


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, temperature: float = 1.0,
                     return_logprobs: bool = False):
    """generation.generate_tokens's job, as the explicit KV-cache loop: left-padded prompts in, a
    Rollout out (responses cut at the first EOS, pad after it). Runs whichever adapter is active.

    Sampling as RLHF does it (Ziegler et al. 2019): the full distribution (top_k 0, top_p 1) at
    `temperature`. One pass over the prompts fills the cache; then one token per step, with the
    position ids counted from the attention mask, until every response has its EOS.
    return_logprobs: also return # (B, T) the log-probs of the sampled tokens under the distribution
    they were drawn from (0 after EOS), to check that PPO's recomputed log-probs agree.
    """
    with autocast(next(model.parameters()).device):  # bf16 on a GPU that has it; sampling in fp32
        return _sample_responses(model, tokenizer, prompts, max_new_tokens, temperature, return_logprobs)


def _sample_responses(model, tokenizer, prompts, max_new_tokens, temperature, return_logprobs):
    lm = causal_lm(model)
    device = next(model.parameters()).device
    query, query_mask = encode_prompts(tokenizer, prompts, device)                       # (B, Tq)
    B = query.shape[0]
    attention_mask = query_mask
    position_ids = (query_mask.cumsum(-1) - 1).clamp(min=0)                            # (B, Tq)
    out = lm.base_model(input_ids=query, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=True)
    next_position = position_ids[:, -1:] + 1                                           # (B, 1)
    finished = torch.zeros(B, dtype=torch.bool, device=device)                         # (B,)
    pad = torch.full((B,), tokenizer.pad_token_id, device=device)
    tokens, logprobs = [], []
    for _ in range(max_new_tokens):
        logits = lm.get_output_embeddings()(out.last_hidden_state[:, -1]).float() / temperature  # (B, V)
        token = torch.where(finished, pad, sample_from(torch.softmax(logits, dim=-1)))          # (B,)
        if return_logprobs:
            logprob = torch.log_softmax(logits, -1).gather(-1, token[:, None]).squeeze(-1)     # (B,)
            logprobs.append(torch.where(finished, torch.zeros_like(logprob), logprob))
        tokens.append(token)
        finished |= token == tokenizer.eos_token_id
        if bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        out = lm.base_model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position,
                            cache=out.cache, use_cache=True)
        next_position = next_position + 1
    response = torch.stack(tokens, dim=1)                                              # (B, T)
    response_mask, ended = first_eos_mask(response, tokenizer.eos_token_id)
    rollout = Rollout(query, query_mask, response, response_mask, ended)
    return (rollout, torch.stack(logprobs, dim=1)) if return_logprobs else rollout


def parameter_memory(model, heads=()) -> dict:
    """Bytes of parameters by role, each storage counted once however many modules share it.

    model: the shared PeftModel (backbone + adapters); heads: the value head, the reward head.
    The proof of "one trunk in memory": the policy, the reference and the reward model all read the
    same backbone storages, so "backbone" is the size of one GPT-2.
    """
    seen, roles = set(), {"backbone": 0, "adapters": 0, "heads": 0}
    named = [(name, p, "adapters" if "lora_" in name else "backbone") for name, p in model.named_parameters()]
    named += [(name, p, "heads") for head in heads for name, p in head.named_parameters()]
    for name, p, role in named:
        storage = p.untyped_storage()
        if storage.data_ptr() not in seen:  # tied weights (GPT-2's wte and lm_head) count once
            seen.add(storage.data_ptr())
            roles[role] += storage.nbytes()
    roles["total"] = sum(roles.values())
    return roles


def save_adapter(model: PeftModel, adapter: str, path: str | Path) -> Path:
    """One adapter of a multi-adapter PeftModel as a plain peft folder (adapter_config.json and
    adapter_model.safetensors). peft's save_pretrained would put an adapter not named "default" in a
    subfolder of its name; this folder loads with PeftModel.from_pretrained(trunk, path) as it is."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=adapter, save_embedding_layers=False)  # sft.save_sft says why
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    config = model.peft_config[adapter]
    inference_mode = config.inference_mode
    config.inference_mode = True  # as peft saves it
    config.save_pretrained(str(path))
    config.inference_mode = inference_mode
    return path
