"""Times multi-scale deformable attention written with PyTorch ops (grid_sample with
align_corners=False and zero padding, as the reference's fallback computes it), forward and
backward, at the size gpu_check times. Prints `torch_msda_fwd_bwd_ms=<median>` last."""
import torch
import torch.nn.functional as F


def msda(value, shapes, locations, weights):
    n, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = locations.shape
    grids = 2 * locations - 1
    per_level = value.split([h * w for h, w in shapes], dim=1)
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = per_level[level].flatten(2).transpose(1, 2).reshape(n * heads, channels, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    a = weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * a).sum(-1).view(n, heads * channels, queries)
    return out.transpose(1, 2).contiguous()


def main():
    device = torch.device("cuda")
    n, heads, channels, points, shapes = 1, 16, 24, 4, [(32, 32)]
    queries = 64 * 64 + 32 * 32 + 16 * 16
    value = torch.randn(n, 32 * 32, heads, channels, device=device, requires_grad=True)
    locations = torch.rand(n, queries, heads, 1, points, 2, device=device, requires_grad=True)
    weights = torch.randn(n, queries, heads, 1, points, device=device).softmax(-1).requires_grad_()
    upstream = torch.randn(n, queries, heads * channels, device=device)

    def step():
        out = msda(value, shapes, locations, weights)
        (out * upstream).sum().backward()

    for _ in range(3):
        step()
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    print(f"torch_msda_fwd_bwd_ms={times[len(times) // 2]:.3f}")


if __name__ == "__main__":
    main()
