//! Properties the metrics must have on any label maps (proptest): Dice symmetric and in
//! [0, 1], perfect for identical maps; HD95 ≤ HD100; NSD growing with the tolerance; scores
//! unchanged by zero padding. Both surface definitions (MONAI's and DeepMind's).

use meddino_eval::ndarray::{Array3, ArrayD, IxDyn};
use meddino_eval::{evaluate_case, CaseOptions, ClassScores, SurfaceMethod};
use proptest::prelude::*;

/// A binary map of `shape` from its flattened voxels.
fn map(shape: (usize, usize, usize), voxels: &[bool]) -> Array3<u8> {
    Array3::from_shape_fn(shape, |(z, y, x)| u8::from(voxels[(z * shape.1 + y) * shape.2 + x]))
}

/// Two random binary maps of one shape, with a spacing.
fn pair() -> impl Strategy<Value = (Array3<u8>, Array3<u8>, [f64; 3])> {
    (1usize..5, 2usize..9, 2usize..9).prop_flat_map(|shape| {
        let n = shape.0 * shape.1 * shape.2;
        (
            proptest::collection::vec(proptest::bool::weighted(0.3), n),
            proptest::collection::vec(proptest::bool::weighted(0.3), n),
            [0.5f64..3.0, 0.5f64..3.0, 0.5f64..3.0],
        )
            .prop_map(move |(a, b, spacing)| (map(shape, &a), map(shape, &b), spacing))
    })
}

fn score(prediction: &Array3<u8>, reference: &Array3<u8>, spacing: [f64; 3], options: &CaseOptions) -> ClassScores {
    let dynamic = |a: &Array3<u8>| -> ArrayD<u8> { a.clone().into_dyn() };
    evaluate_case(
        dynamic(prediction).view(),
        dynamic(reference).view(),
        &spacing,
        &[1u8],
        options,
    )
    .expect("valid maps")[0]
}

fn non_empty(a: &Array3<u8>) -> bool {
    a.iter().any(|&v| v == 1)
}

fn methods() -> [CaseOptions; 2] {
    [
        CaseOptions::new().with_method(SurfaceMethod::Monai),
        CaseOptions::new().with_method(SurfaceMethod::Surfel),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dice_is_symmetric_and_bounded((a, b, spacing) in pair()) {
        prop_assume!(non_empty(&a) && non_empty(&b));
        let ab = score(&a, &b, spacing, &CaseOptions::new());
        let ba = score(&b, &a, spacing, &CaseOptions::new());
        prop_assert_eq!(ab.dice, ba.dice);
        prop_assert!((0.0..=1.0).contains(&ab.dice));
        prop_assert!(ab.iou <= ab.dice + 1e-12, "IoU never exceeds Dice");
    }

    #[test]
    fn identical_maps_score_perfectly((a, _b, spacing) in pair()) {
        prop_assume!(non_empty(&a));
        for options in methods() {
            let s = score(&a, &a, spacing, &options);
            prop_assert_eq!(s.dice, 1.0);
            prop_assert_eq!(s.nsd, 1.0);
            prop_assert_eq!(s.hd95, 0.0);
            prop_assert_eq!(s.hd100, 0.0);
        }
    }

    #[test]
    fn hd95_never_exceeds_hd100((a, b, spacing) in pair()) {
        prop_assume!(non_empty(&a) && non_empty(&b));
        for options in methods() {
            let s = score(&a, &b, spacing, &options);
            prop_assert!(s.hd95 <= s.hd100 + 1e-9, "{:?}: {} > {}", options.method, s.hd95, s.hd100);
        }
    }

    #[test]
    fn nsd_grows_with_the_tolerance((a, b, spacing) in pair(), t in 0.0f64..4.0, dt in 0.0f64..4.0) {
        prop_assume!(non_empty(&a) && non_empty(&b));
        for method in [SurfaceMethod::Monai, SurfaceMethod::Surfel] {
            let options = |t: f64| CaseOptions::new().with_method(method).with_nsd_tolerance_mm(t);
            let tight = score(&a, &b, spacing, &options(t)).nsd;
            let loose = score(&a, &b, spacing, &options(t + dt)).nsd;
            prop_assert!(tight <= loose + 1e-12, "{method:?}: {tight} at {t} mm > {loose} at {} mm", t + dt);
        }
    }

    #[test]
    fn zero_padding_changes_nothing((a, b, spacing) in pair(), pad in 1usize..3) {
        prop_assume!(non_empty(&b));
        let padded = |m: &Array3<u8>| {
            let (z, y, x) = m.dim();
            let mut out = Array3::<u8>::zeros((z + 2 * pad, y + 2 * pad, x + 2 * pad));
            out.slice_mut(meddino_eval::ndarray::s![pad..pad + z, pad..pad + y, pad..pad + x]).assign(m);
            out
        };
        for options in methods() {
            let plain = score(&a, &b, spacing, &options);
            let wide = score(&padded(&a), &padded(&b), spacing, &options);
            let same = |u: f64, v: f64| (u.is_nan() && v.is_nan()) || u == v || (u - v).abs() < 1e-9;
            prop_assert!(
                same(plain.dice, wide.dice) && same(plain.hd95, wide.hd95)
                    && same(plain.hd100, wide.hd100) && same(plain.nsd, wide.nsd),
                "{:?}: {plain:?} vs {wide:?}", options.method
            );
        }
    }
}

#[test]
fn dynamic_maps_of_other_ranks_are_refused() {
    let one_d = ArrayD::<u8>::zeros(IxDyn(&[5]));
    assert!(evaluate_case(one_d.view(), one_d.view(), &[1.0], &[1u8], &CaseOptions::new()).is_err());
}
