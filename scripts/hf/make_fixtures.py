#!/usr/bin/env python3
"""Writes small random DINOv3 models in Hugging Face transformers' layout, with outputs.

Each case is a folder under the output directory (default:
crates/meddino-backbone/tests/data/hf) holding what `save_pretrained` writes (`config.json`,
`model.safetensors`) and `io.safetensors` with `pixel_values` and the model's
`last_hidden_state` and `pooler_output` on them in eval mode. `cases.json` lists the cases and
the versions that made them; the conformance test in crates/meddino-backbone/tests/hf.rs reads
every case it lists.

Requires the pinned versions: pip install torch transformers==5.25.0 safetensors
"""

import argparse
import json
import pathlib

import torch
import transformers
from safetensors.torch import save_file
from transformers import DINOv3ViTConfig, DINOv3ViTModel

PINNED_TRANSFORMERS = "5.25.0"

# Small configurations covering the layouts of the hub models: the MLP sizes (q and v biases,
# no k bias, registers), the "plus" sizes (gated SwiGLU MLP) and the 7B (no q/k/v biases).
CASES = {
    "mlp_registers": dict(
        hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_register_tokens=4, patch_size=8, image_size=32,
    ),
    "swiglu": dict(
        hidden_size=32, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_register_tokens=4, patch_size=8, image_size=32, use_gated_mlp=True, hidden_act="silu",
        rope_theta=50.0,
    ),
    "no_qkv_bias": dict(
        hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=3,
        num_register_tokens=0, patch_size=4, image_size=32, use_gated_mlp=True, hidden_act="silu",
        query_bias=False, value_bias=False, proj_bias=False, mlp_bias=False, layer_norm_eps=1e-6,
        layerscale_value=1e-5, num_channels=1,
    ),
    "all_biases": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_register_tokens=2, patch_size=8, image_size=32, key_bias=True,
    ),
}

# Non-square inputs, so rows and columns cannot be confused.
INPUT_HW = (40, 56)


def perturb(model: DINOv3ViTModel, generator: torch.Generator) -> None:
    """Moves every parameter off its initial value, so that no tensor's role is untested
    (zero biases, unit norms and constant layer scales would hide a swapped name)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "lambda1" in name or name.endswith("norm1.weight") or name.endswith("norm2.weight") \
                    or name == "norm.weight":
                parameter.copy_(1.0 + 0.3 * noise)
            else:
                parameter.add_(0.1 * noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).resolve().parents[2]
                        / "crates/meddino-backbone/tests/data/hf")
    args = parser.parse_args()
    if transformers.__version__ != PINNED_TRANSFORMERS:
        raise SystemExit(f"transformers {transformers.__version__} found, {PINNED_TRANSFORMERS} pinned")
    args.out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(20261203)
    for name, kwargs in CASES.items():
        config = DINOv3ViTConfig(**kwargs)
        model = DINOv3ViTModel(config).eval()
        perturb(model, generator)
        folder = args.out / name
        model.save_pretrained(folder)
        pixel_values = torch.randn((2, config.num_channels, *INPUT_HW), generator=generator)
        with torch.no_grad():
            output = model(pixel_values=pixel_values)
        save_file({
            "pixel_values": pixel_values.contiguous(),
            "last_hidden_state": output.last_hidden_state.contiguous(),
            "pooler_output": output.pooler_output.contiguous(),
        }, folder / "io.safetensors")
        print(f"{name}: last_hidden_state {tuple(output.last_hidden_state.shape)}")
    manifest = {
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
        "cases": list(CASES),
    }
    (args.out / "cases.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
