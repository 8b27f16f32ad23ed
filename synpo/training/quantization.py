"""QLoRA: a 4-bit or 8-bit base model (bitsandbytes, extra `bnb`) under a trainable LoRA adapter.

`synpo.models.bnb_config` builds the transformers quantization config the loader passes to
`from_pretrained`. bitsandbytes >= 0.45 also runs on CPU (measured here with 0.50: NF4 and
int8 layers load, run forward and backward, and LoRA on top trains); on a GPU it is the
usual CUDA build.

A quantized base cannot hold merged weights without being re-quantized, which would round
the adapter away. `dequantized_base` therefore builds a full-precision copy whose quantized
linear weights are the *dequantized* ones the adapter was trained against; the adapter is
merged into that (see synpo.training.merge).
"""

from __future__ import annotations

from synpo.models import load_causal_lm


def is_quantized_weight(weight) -> bool:
    return type(weight).__name__ in ("Params4bit", "Int8Params")


def _unpack_for_dequantize(module) -> None:
    """bitsandbytes repacks NF4 weights into a layout of its own for its CPU inference kernel
    (on the first forward in eval mode without grad, on CPUs with AVX512-BF16; training never
    does); dequantize_4bit reads the standard layout. The repacking rounds the block scales to
    bf16, so after it the inverse is close (~1e-3 here), not exact."""
    weight = module.weight
    if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)


def dequantized_base(trained, base_path: str, *, dtype: str = "auto", trust_remote_code: bool = False):
    """The base model in full precision with every quantized weight of `trained` (a PEFT model
    on a bitsandbytes base) replaced by its dequantized value, on CPU."""
    import torch
    from peft.utils.integrations import dequantize_bnb_weight

    base = load_causal_lm(base_path, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code)
    modules = dict(base.named_modules())
    inner = trained.get_base_model() if hasattr(trained, "get_base_model") else trained
    replaced = 0
    with torch.no_grad():
        for name, module in inner.named_modules():
            weight = module._parameters.get("weight")  # the layer owning it, not PEFT's wrapper
            if weight is None or not is_quantized_weight(weight):
                continue
            _unpack_for_dequantize(module)
            name = name.removesuffix(".base_layer")  # PEFT wraps the quantized layer
            target = modules[name].weight
            value = dequantize_bnb_weight(weight, state=getattr(module, "state", None))
            target.copy_(value.to("cpu", target.dtype).reshape(target.shape))
            replaced += 1
    if replaced == 0:
        raise ValueError("dequantized_base: the trained model has no bitsandbytes weights")
    return base
