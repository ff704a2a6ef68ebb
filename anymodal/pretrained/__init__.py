"""Starting from pretrained parts: import a Hugging Face text LM (:mod:`.hf_llama`) and train in
stages (:mod:`.stages`: trainable parameter groups, per-group learning rates, loading the
previous stage's weights).

    from anymodal.pretrained import from_hf
    model = from_hf("checkpoints/qwen2-0.5b", [{"name": "image.encoder", "path": "clip-vit-b16"}])
"""

from anymodal.pretrained.hf_llama import (check_lm_config, from_hf, hf_model_config, load_hf_state_dict,
                                          load_hf_weights, lm_tokenizer_specs, read_hf_config)
from anymodal.pretrained.stages import GROUPS, TrainableGroups, group_of, load_weights, read_weights

__all__ = ["GROUPS", "TrainableGroups", "check_lm_config", "from_hf", "group_of", "hf_model_config",
           "load_hf_state_dict", "load_hf_weights", "lm_tokenizer_specs", "load_weights", "read_hf_config",
           "read_weights"]
