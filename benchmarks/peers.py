"""Hugging Face peers of identical shape: a ``LlamaForCausalLM`` with anymodal's width, depth,
heads, KV heads, MLP width and vocabulary, and a weight copy proving the two compute the same
function (with QK-norm and learned media positions off, which Llama lacks)."""

from __future__ import annotations

import torch


def hf_llama(cfg, attn: str = "sdpa"):
    """A randomly initialised ``LlamaForCausalLM`` shaped like the anymodal ``ModelConfig`` ``cfg``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
                         num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                         num_key_value_heads=cfg.n_kv_heads, rms_norm_eps=cfg.norm_eps,
                         rope_theta=cfg.rope_theta, max_position_embeddings=8192,
                         tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False)
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(hf_cfg, attn_implementation=attn).float()


def copy_to_hf(model, hf) -> None:
    """anymodal decoder weights -> the Llama of the same shape (names differ, tensors do not)."""
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "head.weight": "lm_head.weight"}
    for i in range(len(model.blocks)):
        a, h = f"blocks.{i}.", f"model.layers.{i}."
        names.update({a + "attn.wq.weight": h + "self_attn.q_proj.weight", a + "attn.wk.weight": h + "self_attn.k_proj.weight",
                      a + "attn.wv.weight": h + "self_attn.v_proj.weight", a + "attn.wo.weight": h + "self_attn.o_proj.weight",
                      a + "mlp.w1.weight": h + "mlp.gate_proj.weight", a + "mlp.w3.weight": h + "mlp.up_proj.weight",
                      a + "mlp.w2.weight": h + "mlp.down_proj.weight", a + "attn_norm.weight": h + "input_layernorm.weight",
                      a + "mlp_norm.weight": h + "post_attention_layernorm.weight"})
    src = model.state_dict()
    with torch.no_grad():
        hf.load_state_dict({names[k]: src[k] for k in names}, strict=True)


def hf_positions(batch) -> torch.Tensor:
    """Position ids restarting at 0 in every document: Hugging Face derives its document mask
    from these (transformers' ``find_packed_sequence_indices``), the packed-sequence contract."""
    return batch.index


def max_logit_difference(tokenizers, cfg_factory) -> float:
    """Largest |logit| difference between anymodal (QK-norm and media positions off, plain RoPE)
    and the Llama holding its weights, on a packed batch: ~1e-5 means the same function."""
    from common import packed_text_batch

    import anymodal as am

    torch.manual_seed(0)
    m = am.AnyModal(tokenizers, cfg_factory(qk_norm=False, media_pos_embed=False, rope="rope")).eval()
    hf = hf_llama(m.config).eval()
    copy_to_hf(m.model, hf)
    batch = packed_text_batch(m, 2, 256, 20, 120, seed=3)
    with torch.no_grad():
        a = m(batch)
        b = hf(input_ids=batch.ids, position_ids=hf_positions(batch), use_cache=False).logits
    return float((a - b).abs().max())
