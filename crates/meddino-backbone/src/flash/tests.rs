//! The op against candle's composite attention and its autograd, on the CPU.

use candle_core::{DType, Device, Tensor, Var, D};

use super::*;

fn composite(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    diff.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// q, k, v with scores spread wide enough that the softmax is far from uniform.
fn inputs(shape: (usize, usize, usize, usize), dtype: DType) -> [Var; 3] {
    [3.0, 3.0, 1.0].map(|spread| {
        let t = (Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap() * spread).unwrap();
        Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
    })
}

#[test]
fn forward_and_gradients_follow_the_composite_attention() {
    // N not a multiple of the kernels' tiles; every head size the kernels have.
    for d in HEAD_DIMS {
        let [q, k, v] = inputs((2, 3, 37, d), DType::F32);
        let scale = 1.0 / (d as f64).sqrt();
        let upstream = Tensor::randn(0f32, 1.0, (2, 3, 37, d), &Device::Cpu).unwrap();
        let ours = flash_attention(&q, &k, &v, scale).unwrap();
        let expected = composite(&q, &k, &v, scale).unwrap();
        assert!(
            max_abs_diff(&ours, &expected) < 1e-5,
            "d {d}: forward {}",
            max_abs_diff(&ours, &expected)
        );
        let ours_grads = (&ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let expected_grads = (&expected * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, b) = (ours_grads.get(var).unwrap(), expected_grads.get(var).unwrap());
            let scale_of = max_abs_diff(b, &b.zeros_like().unwrap());
            let err = max_abs_diff(a, b) / scale_of;
            assert!(err < 1e-4, "d {d}: grad {name} relative error {err}");
        }
    }
}

#[test]
fn bf16_inputs_are_computed_in_f32_and_come_back_in_bf16() {
    let [q, k, v] = inputs((1, 2, 20, 64), DType::BF16);
    let ours = flash_attention(&q, &k, &v, 0.125).unwrap();
    assert_eq!(ours.dtype(), DType::BF16);
    let widened = [&q, &k, &v].map(|t| t.to_dtype(DType::F32).unwrap());
    let expected = composite(&widened[0], &widened[1], &widened[2], 0.125).unwrap();
    // Only O's final rounding to bf16 (2⁻⁸ relative) separates the two.
    let err = max_abs_diff(&ours, &expected);
    assert!(err < 1.5e-2, "{err}");
    let grads = ours.sum_all().unwrap().backward().unwrap();
    assert_eq!(grads.get(&q).unwrap().dtype(), DType::BF16);
}

#[test]
fn refuses_what_the_kernels_do_not_cover() {
    let t = |shape: (usize, usize, usize, usize), dtype| Tensor::zeros(shape, dtype, &Device::Cpu).unwrap();
    let ok = t((1, 2, 5, 64), DType::F32);
    assert!(flash_attention(&ok, &ok, &ok, 1.0).is_ok());
    let odd = t((1, 2, 5, 48), DType::F32);
    let message = flash_attention(&odd, &odd, &odd, 1.0).unwrap_err().to_string();
    assert!(message.contains("[1, 2, 5, 48]"), "{message}");
    let f64s = t((1, 2, 5, 64), DType::F64);
    assert!(flash_attention(&f64s, &f64s, &f64s, 1.0).is_err());
    assert!(flash_attention(&ok, &t((1, 2, 6, 64), DType::F32), &ok, 1.0).is_err());
}
