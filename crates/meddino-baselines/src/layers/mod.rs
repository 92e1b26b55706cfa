//! Building blocks the baselines share, as PyTorch defines them: convolutions with explicit
//! initialisation, transposed convolutions whose kernel equals their stride, instance and
//! batch norm (with running statistics), bilinear resizing, max pooling with padding and
//! channel dropout. Everything here is differentiable with candle's autograd: where candle's
//! own op has no backward (bilinear upsampling, max pooling with overlapping windows) the
//! layer is written from ops that have one.

//!
//! [`Linear`] and [`WeightInit`] come from `meddino-decoder`, whose deformable attention uses
//! them too.

mod conv;
mod functional;
mod norm;

pub use meddino_decoder::linear::{Linear, WeightInit};

pub use self::conv::{conv2d, depthwise_conv3x3, ConvSpec, PixelConvTranspose2d};
pub use self::functional::{
    drop_path, dropout2d, from_tokens, max_pool_3x3_stride2, resize_bilinear, to_three_channels, to_tokens,
};
pub use self::norm::{is_batch_norm_buffer, BatchNorm2d, InstanceNorm2d, LayerNorm, BATCH_NORM_BUFFERS};

#[cfg(test)]
mod testutil {
    use candle_core::Tensor;

    pub(crate) fn close(a: &Tensor, b: &[f32]) {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
}
