"""Reference side of the ViT-B/16 forward benchmark (issue 10): Hugging Face transformers'
DINOv3ViTModel (ViT-B, 4 registers, random weights), batch 1, f32, eval, no_grad, on the
CPU with the same thread count as ours. Prints each pass and `median_s=<seconds>`.

    python scripts/bench/vit_forward_torch.py --size 448 --repeats 3 [--threads 2]
"""

import argparse
import statistics
import time

import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = DINOv3ViTConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        num_register_tokens=4,
        image_size=args.size,
    )
    model = DINOv3ViTModel(config).eval()
    pixels = torch.randn(1, 3, args.size, args.size)
    times = []
    with torch.inference_mode():
        model(pixel_values=pixels)  # warm-up
        for i in range(args.repeats):
            start = time.perf_counter()
            model(pixel_values=pixels)
            times.append(time.perf_counter() - start)
            print(f"pass {i}: {times[-1]:.3f} s")
    print(f"threads={torch.get_num_threads()}")
    print(f"median_s={statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
