"""How big the model and its LoRA are, to set the training tokens against.

Counted on the model's config with empty (meta) weights: nothing is downloaded beyond the config
and nothing is allocated, so a 7B model is sized in a second on a laptop.
"""

from __future__ import annotations

from pydantic import BaseModel


class ModelSize(BaseModel):
    parameters: int
    lora_parameters: int  # rank x (in + out) over every linear layer but the output head (lora_target: all)


def model_size(model_dir: str, lora_rank: int) -> ModelSize | None:
    """The sizes, or None when the model's config cannot be read (a hub id offline)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
        model.tie_weights()  # a tied output head is the input embedding: counted once
    except (OSError, ValueError, KeyError, ImportError):  # unreadable, or an architecture this transformers lacks
        return None
    head = model.get_output_embeddings()
    lora = sum(lora_rank * (m.in_features + m.out_features) for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m is not head)
    parameters = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())  # tied weights once
    return ModelSize(parameters=parameters, lora_parameters=lora)
