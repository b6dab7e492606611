"""Shared-prefix decoding for Llama-family text models (the local backend's fast path).

In RL every prompt is sampled ``n`` times, and Hugging Face ``generate`` treats the ``n`` rows
as unrelated: it runs the prompt ``n`` times, keeps ``n`` copies of its key/value cache, grows
the cache by concatenation at every step (copying all of it) and, for grouped-query attention,
repeats the key/value heads before each attention call. On a CPU, where a decode step is bound
by memory traffic, those copies cost as much as a third of the step at a 200-token prompt.

This decoder runs the same model modules (embeddings, norms, projections, MLP, head — so
LoRA/QLoRA layers and folded weights work unchanged) with its own attention and cache:

- **prefill** once per distinct prompt (batch 1, no padding), keeping the prompt's keys and
  values once: ``(groups, kv_heads, prompt_len, head_dim)``;
- **decode** all ``groups x n`` rows together; each query attends to its group's shared prompt
  cache (one batched matmul per group, no repeated heads) and to its own generated tokens, held
  in a preallocated buffer written in place (grown by doubling, never concatenated per step);
  both parts go through one softmax, so the result is ordinary causal attention.

Rows are group-major (``row = group * n + j``). Positions are those of each unpadded prompt.
Supported: ``llama`` and ``qwen2`` (without sliding windows) causal LMs on text inputs; see
:func:`unsupported_reason`. Token selection (logits processors, sampling, stop criteria) is the
caller's, through the ``select`` callback of :meth:`PrefixDecoder.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SUPPORTED_TYPES = ("llama", "qwen2")

# generation-config fields whose non-default values add logits processors that the fast path
# does not apply (it then declines and ``generate`` runs instead)
_NEUTRAL = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "min_p": (None,),
    "typical_p": (None, 1.0),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
}


def causal_lm(model: Any) -> Any:
    """The transformers causal LM under a PEFT wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def unsupported_reason(model: Any, generation_config: Any = None) -> str | None:
    """Why the fast path cannot run this model (with this generation config), or None."""
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return f"model type {kind!r} (supported: {', '.join(SUPPORTED_TYPES)})"
    if kind == "qwen2" and getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    types = getattr(config, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        return "layers other than full attention"
    inner = getattr(lm, "model", None)
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "unexpected module layout"
    if generation_config is not None:
        for name, neutral in _NEUTRAL.items():
            value = getattr(generation_config, name, None)
            if value not in neutral and value != []:
                return f"generation_config.{name}={value!r}"
    return None


class _Buffers:
    """Per-layer generated-token keys/values ``(rows, kv_heads, capacity, head_dim)``."""

    def __init__(self, n_layers: int, shape: tuple[int, int, int], capacity: int, like):
        rows, heads, dim = shape
        self.k = [like.new_empty((rows, heads, capacity, dim)) for _ in range(n_layers)]
        self.v = [like.new_empty((rows, heads, capacity, dim)) for _ in range(n_layers)]
        self.capacity = capacity

    def ensure(self, needed: int, limit: int) -> None:
        if needed <= self.capacity:
            return
        cap = min(max(needed, 2 * self.capacity), limit)
        for buf in (self.k, self.v):
            for i, old in enumerate(buf):
                new = old.new_empty((*old.shape[:2], cap, old.shape[3]))
                new[:, :, : self.capacity] = old[:, :, : self.capacity]
                buf[i] = new
        self.capacity = cap


def _plain(module: Any) -> Any:
    """A LoRA layer whose adapters are folded into its weights (``merged``) computes exactly its
    base layer: call that directly and skip the wrapper's per-call work."""
    if getattr(module, "merged", False) and hasattr(module, "get_base_layer"):
        return module.get_base_layer()
    return module


def _norm(module: Any) -> Any:
    """Llama/Qwen2 RMSNorm as one fused ``rms_norm`` (same math: float32 normalisation, cast
    back, times the weight); any other norm module as it is."""
    if type(module).__name__ not in ("LlamaRMSNorm", "Qwen2RMSNorm"):
        return module
    import torch.nn.functional as F

    weight, eps = module.weight, module.variance_epsilon
    shape = (weight.shape[-1],)
    return lambda x: weight * F.rms_norm(x.float(), shape, eps=eps).to(x.dtype)


class _Layer:
    """One decoder layer's modules, resolved once per call."""

    def __init__(self, layer: Any):
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1, self.norm2 = _norm(layer.input_layernorm), _norm(layer.post_attention_layernorm)
        self.q, self.k, self.v, self.o = (
            _plain(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)
        )
        self.gate, self.up, self.down = (
            _plain(m) for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        )
        self.act = mlp.act_fn

    def mlp(self, h):
        return self.down(self.act(self.gate(h)) * self.up(h))


class PrefixDecoder:
    """Prefill distinct prompts once and decode ``n`` continuations of each (see module doc)."""

    def __init__(self, model: Any):
        import torch

        lm = causal_lm(model)
        self.lm, self.inner = lm, lm.model
        self.layers = [_Layer(layer) for layer in self.inner.layers]
        self.norm = _norm(self.inner.norm)
        attn = self.inner.layers[0].self_attn
        config = lm.config
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.rep = self.n_heads // self.n_kv
        # decode attention (many small matmuls) runs in float32 on the CPU, where small bf16
        # batched matmuls are about twice as slow; on accelerators in the model's dtype
        weight = self.inner.embed_tokens.weight
        self.att_dtype = torch.float32 if weight.device.type == "cpu" else weight.dtype

    # ------------------------------------------------------------------ model pieces

    def _qkv(self, layer: _Layer, h, cos, sin):
        """Projected and rotated ``(rows, heads, length, head_dim)`` queries, keys, values."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        shape = (*h.shape[:-1], -1, self.head_dim)
        q = layer.q(h).view(shape).transpose(1, 2)
        k = layer.k(h).view(shape).transpose(1, 2)
        v = layer.v(h).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def _logits(self, x):
        return self.lm.lm_head(self.norm(x[:, -1:]))[:, -1].float()

    def prefill(self, ids: list[int]):
        """One prompt's last-position logits ``(vocab,)`` and per-layer keys and values
        ``(kv_heads, length, head_dim)``."""
        import torch
        import torch.nn.functional as F

        device = self.inner.embed_tokens.weight.device
        tokens = torch.tensor([ids], device=device)
        x = self.inner.embed_tokens(tokens)
        positions = torch.arange(len(ids), device=device)[None]
        cos, sin = self.inner.rotary_emb(x, positions)
        keys, values = [], []
        for layer in self.layers:
            q, k, v = self._qkv(layer, layer.norm1(x), cos, sin)
            keys.append(k[0])
            values.append(v[0])
            o = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.scaling, enable_gqa=self.rep > 1
            )
            x = x + layer.o(o.transpose(1, 2).reshape(1, len(ids), -1))
            x = x + layer.mlp(layer.norm2(x))
        return self._logits(x)[0], keys, values

    def _attend(self, q, pk, pv, mask, sk, sv, groups: int, n: int):
        """Decode attention of ``q (rows, heads, head_dim)`` over the shared prompt cache
        ``pk/pv (groups, kv, P, d)`` and each row's own tokens ``sk/sv (rows, kv, t, d)``."""
        import torch

        rows, kv, rep, d = q.shape[0], self.n_kv, self.rep, self.head_dim
        dtype, q = q.dtype, q.to(self.att_dtype)
        plen = pk.shape[2]
        by_group = q.view(groups, n, kv, rep, d).transpose(1, 2).reshape(groups, kv, n * rep, d)
        s_prompt = torch.matmul(by_group, pk.transpose(-1, -2))
        s_prompt = s_prompt.view(groups, kv, n, rep, plen).transpose(1, 2)
        s_prompt = s_prompt.reshape(rows, kv, rep, plen).float()
        if mask is not None:
            s_prompt = s_prompt + mask
        s_own = torch.matmul(q.view(rows, kv, rep, d), sk.transpose(-1, -2)).float()
        scores = torch.cat([s_prompt, s_own], dim=-1) * self.scaling
        p = scores.softmax(dim=-1).to(q.dtype)
        p_prompt = p[..., :plen].reshape(groups, n, kv, rep, plen).transpose(1, 2)
        o_prompt = torch.matmul(p_prompt.reshape(groups, kv, n * rep, plen), pv)
        o_prompt = o_prompt.view(groups, kv, n, rep, d).transpose(1, 2).reshape(rows, kv, rep, d)
        o = o_prompt + torch.matmul(p[..., plen:], sv)
        return o.reshape(rows, 1, kv * rep * d).to(dtype)

    # ------------------------------------------------------------------ the loop

    def run(
        self,
        prompts: list[list[int]],
        n: int,
        max_new_tokens: int,
        select: Callable[[Any, Any], tuple[Any, bool]],
    ):
        """Generate up to ``max_new_tokens`` tokens for ``n`` rows per prompt.

        ``select(logits, generated)`` gets the ``(rows, vocab)`` float32 logits of the next
        position and the ``(rows, t)`` tokens so far; it returns the ``(rows,)`` next tokens and
        whether every row is finished. Returns the ``(rows, steps)`` generated tokens.
        """
        import torch

        groups, rows = len(prompts), len(prompts) * n
        firsts, keys, values = [], [], []
        for ids in prompts:
            logits, k, v = self.prefill(ids)
            firsts.append(logits)
            keys.append(k)
            values.append(v)
        lengths = [len(ids) for ids in prompts]
        plen = max(lengths)
        device = firsts[0].device
        att = self.att_dtype
        pk = [_stack_padded([k[i] for k in keys], plen).to(att) for i in range(len(self.layers))]
        pv = [_stack_padded([v[i] for v in values], plen).to(att) for i in range(len(self.layers))]
        mask = None
        if min(lengths) < plen:
            pad = (
                torch.arange(plen, device=device)[None]
                >= torch.tensor(lengths, device=device)[:, None]
            )
            mask = torch.zeros(groups, plen, device=device).masked_fill(pad, float("-inf"))
            mask = mask.repeat_interleave(n, dim=0)[:, None, None, :]
        positions = torch.tensor(lengths, device=device).repeat_interleave(n)[:, None]
        logits = torch.stack(firsts).repeat_interleave(n, dim=0)
        generated = torch.empty((rows, 0), dtype=torch.long, device=device)
        buffers = _Buffers(
            len(self.layers),
            (rows, self.n_kv, self.head_dim),
            min(max_new_tokens, 64),
            pk[0],
        )
        for t in range(max_new_tokens):
            tokens, finished = select(logits, generated)
            generated = torch.cat([generated, tokens[:, None]], dim=1)
            if finished or t + 1 == max_new_tokens:
                break
            buffers.ensure(t + 1, max_new_tokens)
            x = self.inner.embed_tokens(tokens[:, None])
            cos, sin = self.inner.rotary_emb(x, positions + t)
            for i, layer in enumerate(self.layers):
                q, k, v = self._qkv(layer, layer.norm1(x), cos, sin)
                buffers.k[i][:, :, t] = k[:, :, 0]
                buffers.v[i][:, :, t] = v[:, :, 0]
                o = self._attend(
                    q[:, :, 0],
                    pk[i],
                    pv[i],
                    mask,
                    buffers.k[i][:, :, : t + 1],
                    buffers.v[i][:, :, : t + 1],
                    groups,
                    n,
                )
                x = x + layer.o(o)
                x = x + layer.mlp(layer.norm2(x))
            logits = self._logits(x)
        return generated


def _stack_padded(parts: list, length: int):
    """Stack ``(heads, len_i, d)`` tensors into ``(len(parts), heads, length, d)``, zero-padded."""
    import torch

    if all(p.shape[1] == length for p in parts):
        return torch.stack(parts)
    out = parts[0].new_zeros((len(parts), parts[0].shape[0], length, parts[0].shape[2]))
    for i, p in enumerate(parts):
        out[i, :, : p.shape[1]] = p
    return out
