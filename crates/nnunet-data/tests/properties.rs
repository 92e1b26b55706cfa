//! Properties of cropping and resampling on any volume (proptest): cropping to the nonzero
//! region and putting the crop back is lossless; resampling gives the requested shape, keeps
//! label sets within the input's, and to the same shape changes nothing.

use nnunet_data::crop::crop_to_nonzero;
use nnunet_data::ndarray::{s, Array3, Array4};
use nnunet_data::preprocess::resample::{resample_data, resample_probabilities, resample_seg};
use proptest::prelude::*;

fn shape() -> impl Strategy<Value = (usize, usize, usize)> {
    (1usize..5, 2usize..10, 2usize..10)
}

/// A volume that is zero outside a random box and random inside it.
fn boxed_volume() -> impl Strategy<Value = Array4<f32>> {
    shape().prop_flat_map(|(z, y, x)| {
        (
            [0..z, 0..y, 0..x],
            proptest::collection::vec(-100.0f32..100.0, z * y * x),
        )
            .prop_map(move |(corner, values)| {
                let mut volume = Array4::<f32>::zeros((1, z, y, x));
                for ((_, zz, yy, xx), v) in volume.indexed_iter_mut() {
                    if zz >= corner[0] && yy >= corner[1] && xx >= corner[2] {
                        *v = values[(zz * y + yy) * x + xx];
                    }
                }
                volume
            })
    })
}

fn labels() -> impl Strategy<Value = Array3<i16>> {
    shape().prop_flat_map(|(z, y, x)| {
        proptest::collection::vec(0i16..4, z * y * x)
            .prop_map(move |v| Array3::from_shape_vec((z, y, x), v).expect("shape"))
    })
}

fn target() -> impl Strategy<Value = [usize; 3]> {
    [1usize..6, 1usize..12, 1usize..12]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn cropping_and_uncropping_is_lossless(volume in boxed_volume()) {
        let seg = Array4::<i16>::zeros(volume.raw_dim());
        let cropped = crop_to_nonzero(volume.view(), seg.view());
        let [[z0, z1], [y0, y1], [x0, x1]] = cropped.bbox;
        prop_assert_eq!(cropped.data.dim(), (1, z1 - z0, y1 - y0, x1 - x0));
        let mut back = Array4::<f32>::zeros(volume.raw_dim());
        back.slice_mut(s![.., z0..z1, y0..y1, x0..x1]).assign(&cropped.data);
        prop_assert_eq!(back, volume);
    }

    #[test]
    fn resampled_labels_have_the_shape_and_only_input_labels(seg in labels(), shape in target(), separate in proptest::option::of(0usize..3)) {
        let out = resample_seg(seg.view(), shape, separate);
        prop_assert_eq!(out.shape(), &shape[..]);
        prop_assert!(out.iter().all(|v| *v == 0 || seg.iter().any(|s| s == v)), "no new labels");
    }

    #[test]
    fn resampling_to_the_same_shape_is_the_identity(seg in labels()) {
        let shape = [seg.dim().0, seg.dim().1, seg.dim().2];
        prop_assert_eq!(resample_seg(seg.view(), shape, None), seg.clone());
        let data = seg.mapv(f32::from);
        prop_assert_eq!(resample_data(data.view(), shape, None), data.clone());
        prop_assert_eq!(resample_probabilities(data.view(), shape, Some(0)), data);
    }

    #[test]
    fn linear_resampling_stays_within_the_input_range(seg in labels(), shape in target()) {
        let data = seg.mapv(f32::from);
        let (lo, hi) = data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
        let out = resample_probabilities(data.view(), shape, None);
        prop_assert!(out.iter().all(|&v| v >= lo - 1e-5 && v <= hi + 1e-5));
    }
}
