"""Reference side of issue 10's network benchmarks: MedDINOv3's segmentation network in
PyTorch — transformers' DINOv3ViTModel as the ViT-B/16 (4 registers, no qkv bias, layer
scale, LayerNorm eps 1e-6) and Primus_Multiscale's decoder written here from
shared/spec/meddinov3-reference.md §2.1-2.3 (PatchDecode, LayerNormNd; the normed patch
tokens of blocks 2, 5, 8, 11, concatenated) — random weights; forward and predict in f32,
eval, inference_mode. Our side is `crates/meddino-train/examples/network_bench.rs` (forward,
predict) and `crates/meddino-train/examples/train_step.rs` (train-step).

    # forward of one 448² image: prints each pass, median_s= and peak_rss_mib=
    python scripts/bench/primus_torch.py --mode forward --size 448 --repeats 3
    # nnU-Net's sliding window (nnUNetPredictor.predict_sliding_window_return_logits) on a
    # random 1×16×256×256 volume: 2-D patch 224, step 0.5, Gaussian on, no mirroring;
    # prints seconds= and peak_rss_mib=
    python scripts/bench/primus_torch.py --mode predict [--volume case.npy]
    # one training iteration of meddinov3_base_primus_multiscale_Trainer on a GPU, 896²,
    # batch 2, bf16 autocast: prints each step, median_s= and peak_gpu_mib=
    python scripts/bench/primus_torch.py --mode train-step --device cuda --size 896 --batch 2 --steps 5 --classes 4

Other flags: --device cpu|cuda (forward and train-step; predict runs on the CPU), --threads
2 (torch.set_num_threads), --classes 6, --batch 1 (forward, train-step), --slices 16
--height 256 --width 256 --patch 224 --step 0.5 (predict; --volume takes a (Z, Y, X) or
(1, Z, Y, X) float array instead), --steps 3 --amp bf16|none (train-step), --seed 0. The
predict mode needs nnunetv2 in the venv (`pip install nnunetv2`).

The train-step mode does what our `train_step` example times, as the trainer does it: the
network in training mode with DINOv3's stochastic depth (rate 0.2 in every block, as
MedDINOv3's `vit_base(drop_path_rate=0.2)`: each residual branch runs on a random subset
of max(⌊B·0.8⌋, 1) samples and is added back scaled by B / subset, so at batch 2 on one
sample — transformers' own DropPath would compute the whole batch and mask it), nnU-Net's
DC_and_CE_loss (cross-entropy + soft Dice over the foreground classes, batch Dice, smooth
1e-5), backward, gradient clipping to norm 12, AdamW (betas 0.9/0.98, weight decay 0.05, eps
1e-8; decoder lr 3e-4, ViT lr 3e-5), then a device synchronisation; random images and
labels, one untimed warm-up step, the median of --steps timed steps. --amp bf16 runs the
forward and loss under torch.autocast(bfloat16) (no gradient scaler: bf16 needs none),
--amp none in f32. On CUDA, cudnn.benchmark is on, as nnU-Net's training sets it.

Differences from our network that are not in the work done: transformers computes RoPE in
fp32 (MedDINOv3, and ours by default, in bf16 with q/k rounded to bf16; `--rope fp32` on
our side matches), and its cls/register/patch tokens and initialisation are its own.
"""

import argparse
import math
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DINOv3ViTConfig, DINOv3ViTModel
from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTLayer


class LayerNormNd(nn.Module):
    """DNA's LayerNormNd: LayerNorm over the channels of an N×C×… map, eps 1e-6 (§2.2)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        idx = (None, slice(None), *([None] * (x.ndim - 2)))
        return self.weight[idx] * x + self.bias[idx]


class PatchDecode(nn.Module):
    """MedDINOv3's local 2-D PatchDecode (§2.1): n = log2(patch) stages of
    ConvTranspose2d(k2, s2) → LayerNormNd → GELU, halving the channels, then a 1×1 conv."""

    def __init__(self, patch_size: int, embed_dim: int, out_channels: int) -> None:
        super().__init__()
        n = int(math.log2(patch_size))
        assert 2**n == patch_size and n >= 1, "patch size must be a power of two"
        ch = [embed_dim // 2**i for i in range(n + 1)]
        stages: list[nn.Module] = [
            nn.Sequential(
                nn.ConvTranspose2d(ch[i], ch[i + 1], kernel_size=2, stride=2),
                LayerNormNd(ch[i + 1]),
                nn.GELU(),
            )
            for i in range(n)
        ]
        stages.append(nn.Conv2d(ch[n], out_channels, kernel_size=1))
        self.decode = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(x)


def init_he(module: nn.Module, neg_slope: float = 1e-2) -> None:
    """InitWeights_He(1e-2) on the decoder's convolutions (§2.3)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(module.weight, a=neg_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class PrimusMultiscale(nn.Module):
    """Primus_Multiscale (§2.3): the final norm applied to the outputs of the
    interaction blocks (0-based), prefix tokens dropped, reshaped to maps, concatenated on
    channels in that order, decoded to full-resolution logits."""

    def __init__(self, encoder: DINOv3ViTModel, num_classes: int, interaction_indices=(2, 5, 8, 11)) -> None:
        super().__init__()
        cfg = encoder.config
        self.dino_encoder = encoder
        self.interaction_indices = list(interaction_indices)
        self.patch_size = cfg.patch_size
        self.prefix = 1 + cfg.num_register_tokens
        self.up_projection = PatchDecode(cfg.patch_size, cfg.hidden_size * len(self.interaction_indices), num_classes)
        self.up_projection.apply(init_he)
        self.decoder = nn.Module()  # nnU-Net's trainer sets decoder.deep_supervision
        self.decoder.deep_supervision = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 1, "Primus_Multiscale takes one input channel"
        b, _, h, w = x.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        out = self.dino_encoder(pixel_values=x.repeat(1, 3, 1, 1), output_hidden_states=True)
        # hidden_states[0] is the embeddings; hidden_states[i + 1] the output of block i.
        norm = self.dino_encoder.norm
        maps = [
            norm(out.hidden_states[i + 1])[:, self.prefix :]
            .reshape(b, gh, gw, -1)
            .permute(0, 3, 1, 2)
            .contiguous()
            for i in self.interaction_indices
        ]
        return self.up_projection(torch.cat(maps, dim=1))


def build_network(
    num_classes: int,
    hidden: int = 768,
    heads: int = 12,
    layers: int = 12,
    intermediate: int = 3072,
    interaction_indices=(2, 5, 8, 11),
) -> PrimusMultiscale:
    """MedDINOv3's network (ViT-B/16 by default) with random weights, in eval mode."""
    config = DINOv3ViTConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        num_register_tokens=4,
        # MedDINOv3: vit_base(qkv_bias=False, layerscale_init=1e-5), LayerNorm eps 1e-6.
        query_bias=False,
        key_bias=False,
        value_bias=False,
        layerscale_value=1e-5,
        layer_norm_eps=1e-6,
        drop_path_rate=0.0,
        patch_size=16,
        image_size=224,
    )
    return PrimusMultiscale(DINOv3ViTModel(config), num_classes, interaction_indices).eval()


def use_batch_subset_drop_path(encoder: DINOv3ViTModel, rate: float) -> None:
    """DINOv3's stochastic depth in training (`drop_add_residual_stochastic_depth`, which
    MedDINOv3's blocks and ours use) on transformers' layers: each residual branch runs on a
    random subset of max(⌊B·(1 − rate)⌋, 1) samples, added back scaled by B / subset."""
    layers = [m for m in encoder.modules() if isinstance(m, DINOv3ViTLayer)]
    assert len(layers) == encoder.config.num_hidden_layers, "transformers' DINOv3 blocks not found"
    for layer in layers:
        plain = layer.forward

        def forward(hidden_states, attention_mask=None, position_embeddings=None, _layer=layer, _plain=plain, **kwargs):
            if not (_layer.training and rate > 0.0):
                return _plain(
                    hidden_states, attention_mask=attention_mask, position_embeddings=position_embeddings, **kwargs
                )
            assert attention_mask is None, "the subset would need its rows of the mask"
            b = hidden_states.shape[0]
            keep = max(int(b * (1.0 - rate)), 1)

            def attention(x):
                out, _ = _layer.attention(_layer.norm1(x), position_embeddings=position_embeddings, **kwargs)
                return _layer.layer_scale1(out)

            def ffn(x):
                return _layer.layer_scale2(_layer.mlp(_layer.norm2(x)))

            for branch in (attention, ffn):
                subset = torch.randperm(b, device=hidden_states.device)[:keep]
                update = branch(hidden_states[subset]).to(hidden_states.dtype)
                hidden_states = torch.index_add(hidden_states, 0, subset, update, alpha=b / keep)
            return hidden_states

        layer.forward = forward


def dice_and_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """nnU-Net's DC_and_CE_loss as the 2-D trainers use it (and meddino-train's
    `dice_and_ce_loss` with batch Dice): cross-entropy + soft Dice (softmax, background
    excluded, Dice pooled over the batch, (2·I + 1e-5) / max(P + G + 1e-5, 1e-8)), weights 1."""
    classes = logits.shape[1]
    ce = F.cross_entropy(logits, target)
    probabilities = logits.softmax(1)[:, 1:]
    truth = F.one_hot(target, classes).permute(0, 3, 1, 2)[:, 1:].to(probabilities.dtype)
    axes = [0, *range(2, logits.ndim)]
    intersect = (probabilities * truth).sum(axes)
    denominator = probabilities.sum(axes) + truth.sum(axes)
    dice = (2 * intersect + 1e-5) / (denominator + 1e-5).clamp_min(1e-8)
    return ce - dice.mean()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_forward(args: argparse.Namespace, network: nn.Module, device: torch.device) -> None:
    x = torch.randn(args.batch, 1, args.size, args.size, device=device)
    times = []
    with torch.inference_mode():
        network(x)  # warm-up
        synchronize(device)
        for i in range(args.repeats):
            start = time.perf_counter()
            logits = network(x)
            synchronize(device)
            times.append(time.perf_counter() - start)
            shape = f"{args.size}x{args.size} batch {args.batch} -> {list(logits.shape)}"
            print(f"forward {shape}: pass {i + 1} {times[-1]:.3f} s")
    print(f"median_s={statistics.median(times):.4f}")
    print(f"peak_rss_mib={peak_rss_mib():.0f}")


def run_train_step(args: argparse.Namespace, network: PrimusMultiscale, device: torch.device) -> None:
    use_batch_subset_drop_path(network.dino_encoder, args.drop_path)
    network.train()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # MedDINOv3's trainer: AdamW with the decoder and the ViT in two groups.
    decoder = [p for name, p in network.named_parameters() if not name.startswith("dino_encoder.")]
    encoder = list(network.dino_encoder.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": decoder, "lr": 3e-4}, {"params": encoder, "lr": 3e-5}],
        betas=(0.9, 0.98),
        eps=1e-8,
        weight_decay=0.05,
    )
    images = torch.randn(args.batch, 1, args.size, args.size, device=device)
    labels = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=device)
    amp = args.amp == "bf16"

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = network(images)
            loss = dice_and_ce_loss(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()
        synchronize(device)
        return loss.item()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()  # warm-up: kernels, cuDNN's autotuning, the optimiser's state
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
        print(
            f"train step {args.size}x{args.size} batch {args.batch} amp {args.amp} on {device}: "
            f"step {i + 1} {times[-1]:.3f} s, loss {loss:.4f}"
        )
    print(f"median_s={statistics.median(times):.4f}")
    if device.type == "cuda":
        print(f"peak_gpu_mib={torch.cuda.max_memory_allocated(device) / 2**20:.0f}")
    else:
        print(f"peak_rss_mib={peak_rss_mib():.0f}")


def run_predict(args: argparse.Namespace, network: nn.Module) -> None:
    import numpy as np
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if args.volume:
        array = np.load(args.volume).astype(np.float32)
        volume = torch.from_numpy(array if array.ndim == 4 else array[None])
    else:
        volume = torch.randn(1, args.slices, args.height, args.width)
    patch = [args.patch, args.patch]
    # A minimal plans file with one 2-D configuration, as the trainer hands the predictor.
    plans = {
        "dataset_name": "Dataset999_Bench",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": list(volume.shape[1:]),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": {
                "data_identifier": "nnUNetPlans_2d",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 1,
                "patch_size": patch,
                "spacing": [1.0, 1.0],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {},
                "resampling_fn_seg_kwargs": {},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {},
                "architecture": {
                    "network_class_name": "Primus_Multiscale",
                    "arch_kwargs": {},
                    "_kw_requires_import": [],
                },
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }
    labels = {"background": 0, **{f"class{i}": i for i in range(1, args.classes)}}
    dataset_json = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz"}
    plans_manager = PlansManager(plans)
    predictor = nnUNetPredictor(
        tile_step_size=args.step,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,  # nnU-Net forces this off on the CPU anyway
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network,
        plans_manager,
        plans_manager.get_configuration("2d"),
        None,
        dataset_json,
        "meddinov3_base_primus_multiscale_Trainer",
        (0, 1),
    )
    assert predictor.label_manager.num_segmentation_heads == args.classes
    steps = compute_steps_for_sliding_window(
        [max(s, p) for s, p in zip(volume.shape[2:], patch)], patch, args.step
    )
    tiles = volume.shape[1] * len(steps[0]) * len(steps[1])
    print(
        f"volume {list(volume.shape)}, patch {args.patch}², step {args.step}, {tiles} tiles, "
        f"one per pass, no mirroring, threads={torch.get_num_threads()}"
    )
    start = time.perf_counter()
    logits = predictor.predict_sliding_window_return_logits(volume)
    seconds = time.perf_counter() - start
    print(f"logits {list(logits.shape)} {logits.dtype}, mean {logits.float().mean().item():.5f}")
    print(f"seconds={seconds:.3f}")
    print(f"peak_rss_mib={peak_rss_mib():.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["forward", "predict", "train-step"], default="forward")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--patch", type=int, default=224)
    parser.add_argument("--step", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    parser.add_argument("--drop-path", type=float, default=0.2, help="train-step: the ViT's stochastic depth rate")
    parser.add_argument("--volume", help="a (Z, Y, X) or (1, Z, Y, X) .npy volume instead of a random one")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if args.mode == "predict" and device.type != "cpu":
        parser.error("predict runs on the CPU")
    network = build_network(args.classes).to(device)
    print(
        f"Primus_Multiscale on transformers' DINOv3ViTModel (ViT-B/16, 4 registers), {args.classes} classes, "
        f"{sum(p.numel() for p in network.parameters()) / 1e6:.1f} M parameters, "
        f"attention {network.dino_encoder.config._attn_implementation}, threads={torch.get_num_threads()}, "
        f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
    )
    if args.mode == "forward":
        run_forward(args, network, device)
    elif args.mode == "train-step":
        run_train_step(args, network, device)
    else:
        run_predict(args, network)


if __name__ == "__main__":
    main()
