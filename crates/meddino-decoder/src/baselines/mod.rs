//! The networks MedDINOv3 is compared against, trained by the same pipeline
//! (`shared/spec/meddinov3-reference.md` §3.5, §4.2–4.3; `nnunet-reference.md` §3.6):
//! nnU-Net's PlainConvUNet, SegFormer MiT-B2 and the Dino U-Net (a frozen DINOv3 ViT with a
//! ViT-Adapter, FAPM and a U-Net decoder). Each implements
//! [`SegmentationNetwork`](crate::SegmentationNetwork) with PyTorch's state-dict names, so
//! checkpoints of the Python trainers load.

pub mod dino_unet;
pub mod layers;
pub mod segformer;
pub mod unet;
