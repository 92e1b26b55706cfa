//! A synthetic abdominal CT data set in nnU-Net's raw format, for demos and tests that must
//! run with nothing downloaded.
//!
//! Each case is an axial stack (anisotropic: thick slices, fine in-plane spacing) of a torso
//! with skin, subcutaneous fat, abdominal wall muscle, spine with spinal canal, aorta, vena
//! cava, bowel with gas and fat, stomach, gallbladder and pancreas, and the three labelled
//! organs: liver (1), kidneys (2, both one label) and spleen (3). Their Hounsfield units
//! overlap on purpose — liver 60, spleen 50, kidneys 40, pancreas 45, bowel wall 40 — under
//! Gaussian noise of σ 18 HU, so intensity alone does not segment them; position, shape
//! and context do. Sizes, positions, shapes (ellipsoids with lobes) and the torso vary per
//! case; everything follows from the seed.

use std::path::Path;

use ndarray::Array3;
use serde_json::json;

use crate::error::{Error, Result};
use crate::io::{write_atomic, write_ct_image, write_label_map, ItkGeometry};
use crate::random::RandomState;

/// Label values of the phantom organs.
pub const LABELS: [(&str, u8); 4] = [("background", 0), ("liver", 1), ("kidney", 2), ("spleen", 3)];

/// The shape of the generated data set.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomOptions {
    /// Slices per case.
    pub slices: usize,
    /// In-plane size (square).
    pub size: usize,
    /// Slice thickness in mm.
    pub slice_thickness: f64,
    /// In-plane spacing in mm.
    pub pixel_spacing: f64,
    /// Noise standard deviation in HU.
    pub noise_hu: f64,
}

impl Default for PhantomOptions {
    fn default() -> Self {
        Self {
            slices: 24,
            size: 128,
            slice_thickness: 6.0,
            pixel_spacing: 2.8,
            noise_hu: 18.0,
        }
    }
}

/// One generated case: HU image and labels, (Z, Y, X).
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomCase {
    /// Hounsfield units.
    pub image: Array3<i16>,
    /// Labels (see [`LABELS`]).
    pub labels: Array3<u8>,
    /// Spacing (Z, Y, X) in mm.
    pub spacing: [f64; 3],
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut RandomState) -> f64 {
    let u = 1.0 - rng.uniform();
    let v = rng.uniform();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// A lobed ellipsoid: centre and radii in normalised coordinates (x, y in [−1, 1] across
/// the torso, z in [0, 1] from the top slice), with a radial wobble of up to three lobes.
#[derive(Debug, Clone)]
struct Blob {
    centre: [f64; 3],
    radii: [f64; 3],
    wobble: [(f64, f64); 3],
}

impl Blob {
    fn new(rng: &mut RandomState, centre: [f64; 3], radii: [f64; 3], jitter: f64) -> Self {
        // Uniform in [−1, 1).
        let mut signed = || 2.0 * rng.uniform() - 1.0;
        let centre = [
            centre[0] + jitter * signed() * radii[0],
            centre[1] + jitter * signed() * radii[1],
            centre[2] + 0.05 * signed(),
        ];
        let radii = [
            radii[0] * (1.0 + 0.18 * signed()),
            radii[1] * (1.0 + 0.18 * signed()),
            radii[2] * (1.0 + 0.12 * signed()),
        ];
        let wobble = [0; 3].map(|_| (0.12 * rng.uniform(), std::f64::consts::TAU * rng.uniform()));
        Self { centre, radii, wobble }
    }

    /// Whether the normalised point lies inside.
    fn contains(&self, x: f64, y: f64, z: f64) -> bool {
        let (dx, dy, dz) = (
            (x - self.centre[0]) / self.radii[0],
            (y - self.centre[1]) / self.radii[1],
            (z - self.centre[2]) / self.radii[2],
        );
        let angle = dy.atan2(dx);
        let lobes: f64 = self
            .wobble
            .iter()
            .enumerate()
            .map(|(k, (amplitude, phase))| amplitude * ((k as f64 + 2.0) * angle + phase).sin())
            .sum();
        dx * dx + dy * dy + dz * dz < (1.0 + lobes).powi(2)
    }
}

/// Generates case `index` of the data set seeded by `seed`.
pub fn generate_case(options: &PhantomOptions, seed: u32, index: u32) -> PhantomCase {
    let mut rng = RandomState::new(seed.wrapping_mul(7919).wrapping_add(index));
    let (nz, n) = (options.slices, options.size);
    // Torso half-widths (fraction of the field of view) and organ layout, patient's right
    // on the image's left (radiological convention), anterior up.
    let torso = [0.80 + 0.1 * rng.uniform(), 0.64 + 0.08 * rng.uniform()];
    let fat = 0.05 + 0.05 * rng.uniform();
    let liver = Blob::new(&mut rng, [-0.36, -0.05, 0.3], [0.34, 0.42, 0.45], 0.2);
    let liver_lobe = Blob::new(&mut rng, [-0.05, -0.25, 0.2], [0.22, 0.18, 0.22], 0.25);
    let spleen = Blob::new(&mut rng, [0.5, 0.18, 0.3], [0.16, 0.24, 0.3], 0.25);
    let kidneys = [
        Blob::new(&mut rng, [-0.3, 0.34, 0.62], [0.12, 0.17, 0.25], 0.2),
        Blob::new(&mut rng, [0.3, 0.34, 0.66], [0.12, 0.17, 0.25], 0.2),
    ];
    let stomach = Blob::new(&mut rng, [0.3, -0.25, 0.25], [0.2, 0.18, 0.2], 0.3);
    let gallbladder = Blob::new(&mut rng, [-0.28, -0.28, 0.5], [0.07, 0.08, 0.12], 0.2);
    let pancreas = Blob::new(&mut rng, [0.1, 0.1, 0.55], [0.28, 0.07, 0.1], 0.2);
    let bowel: Vec<(Blob, f64)> = (0..14)
        .map(|_| {
            let centre = [
                -0.6 + 1.2 * rng.uniform(),
                -0.5 + 0.7 * rng.uniform(),
                0.45 + 0.55 * rng.uniform(),
            ];
            let r = 0.06 + 0.06 * rng.uniform();
            let content = [-900.0, 10.0, 35.0, -80.0][rng.integer(0, 3) as usize];
            (Blob::new(&mut rng, centre, [r, r, 0.12], 0.0), content)
        })
        .collect();
    let spine = [0.03 * (2.0 * rng.uniform() - 1.0), 0.45];
    // Mesenteric texture: fat with bowel wall and vessels, a random interference pattern.
    let texture = [0; 6].map(|_| rng.uniform());
    let mut image = Array3::<i16>::zeros((nz, n, n));
    let mut labels = Array3::<u8>::zeros((nz, n, n));
    for z in 0..nz {
        let fz = (z as f64 + 0.5) / nz as f64;
        for y in 0..n {
            let fy = (y as f64 + 0.5) / n as f64 * 2.0 - 1.0;
            for x in 0..n {
                let fx = (x as f64 + 0.5) / n as f64 * 2.0 - 1.0;
                let r = ((fx / torso[0]).powi(2) + (fy / torso[1]).powi(2)).sqrt();
                let (hu, label) = if r > 1.0 {
                    (-1000.0, 0) // air
                } else if r > 1.0 - 0.02 {
                    (30.0, 0) // skin
                } else if r > 1.0 - 0.02 - fat {
                    (-100.0, 0) // subcutaneous fat
                } else if r > 1.0 - 0.06 - fat {
                    (55.0, 0) // abdominal wall muscle
                } else {
                    let (sx, sy) = (fx - spine[0], fy - spine[1]);
                    let vertebra = (sx / 0.11).powi(2) + (sy / 0.1).powi(2);
                    let canal = (sx / 0.04).powi(2) + ((sy - 0.12) / 0.04).powi(2);
                    let aorta = ((fx - 0.08) / 0.05).powi(2) + ((fy - 0.28) / 0.05).powi(2);
                    let cava = ((fx + 0.1) / 0.05).powi(2) + ((fy - 0.26) / 0.045).powi(2);
                    if canal < 1.0 {
                        (20.0, 0)
                    } else if vertebra < 1.0 {
                        (if vertebra > 0.7 { 700.0 } else { 250.0 }, 0)
                    } else if aorta < 1.0 {
                        (160.0, 0)
                    } else if cava < 1.0 {
                        (120.0, 0)
                    } else if kidneys.iter().any(|k| k.contains(fx, fy, fz)) {
                        (40.0, 2)
                    } else if gallbladder.contains(fx, fy, fz) {
                        (5.0, 0)
                    } else if liver.contains(fx, fy, fz) || liver_lobe.contains(fx, fy, fz) {
                        (60.0, 1)
                    } else if spleen.contains(fx, fy, fz) {
                        (50.0, 3)
                    } else if stomach.contains(fx, fy, fz) {
                        (if fy < stomach.centre[1] - 0.05 { -950.0 } else { 15.0 }, 0)
                    } else if pancreas.contains(fx, fy, fz) {
                        (45.0, 0)
                    } else if let Some((_, content)) = bowel.iter().find(|(b, _)| b.contains(fx, fy, fz)) {
                        (*content, 0)
                    } else {
                        let [a, b, c, p, q, w] = texture;
                        let pattern = (fx * (15.0 + 10.0 * a) + 6.0 * p).sin()
                            * (fy * (15.0 + 10.0 * b) + 6.0 * q).cos()
                            + 0.6 * ((fx + fy) * (20.0 + 10.0 * c) + 6.0 * w).sin();
                        (if pattern > 0.4 { 40.0 } else { -90.0 }, 0)
                    }
                };
                let noisy = hu + options.noise_hu * normal(&mut rng);
                image[[z, y, x]] = noisy.round().clamp(-1024.0, 3071.0) as i16;
                labels[[z, y, x]] = label;
            }
        }
    }
    PhantomCase {
        image,
        labels,
        spacing: [options.slice_thickness, options.pixel_spacing, options.pixel_spacing],
    }
}

fn geometry(spacing: [f64; 3]) -> ItkGeometry {
    ItkGeometry {
        // ITK order (x, y, z).
        spacing: vec![spacing[2], spacing[1], spacing[0]],
        origin: vec![0.0, 0.0, 0.0],
        direction: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    }
}

/// Writes `train` training cases (`imagesTr`, `labelsTr`) and `test` held-out cases
/// (`imagesTs`, `labelsTs`) with `dataset.json` into `folder` (a `DatasetXXX_Name`).
///
/// # Errors
///
/// When a file cannot be written; the error names it.
pub fn write_dataset(folder: &Path, options: &PhantomOptions, seed: u32, train: usize, test: usize) -> Result<()> {
    for sub in ["imagesTr", "labelsTr", "imagesTs", "labelsTs"] {
        let path = folder.join(sub);
        std::fs::create_dir_all(&path).map_err(|source| Error::Io { path, source })?;
    }
    let cases: Vec<(String, &str)> = (0..train)
        .map(|i| (format!("phantom_{i:03}"), "Tr"))
        .chain((train..train + test).map(|i| (format!("phantom_{i:03}"), "Ts")))
        .collect();
    let written: Vec<Result<()>> = {
        use rayon::prelude::*;
        cases
            .par_iter()
            .enumerate()
            .map(|(i, (id, split))| {
                let case = generate_case(options, seed, i as u32);
                let geometry = geometry(case.spacing);
                write_ct_image(
                    &folder.join(format!("images{split}/{id}_0000.nii.gz")),
                    case.image.view().into_dyn(),
                    &geometry,
                )?;
                write_label_map(
                    &folder.join(format!("labels{split}/{id}.nii.gz")),
                    case.labels.mapv(i32::from).view().into_dyn(),
                    &geometry,
                )
            })
            .collect()
    };
    written.into_iter().collect::<Result<()>>()?;
    let labels: serde_json::Map<String, serde_json::Value> = LABELS
        .iter()
        .map(|(name, value)| (name.to_string(), json!(value)))
        .collect();
    let dataset = json!({
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": train,
        "file_ending": ".nii.gz",
        "name": "Phantom",
        "description": "Synthetic abdominal CT phantoms generated by meddino (nnunet_data::phantom)",
    });
    write_atomic(&folder.join("dataset.json"), |out| {
        serde_json::to_writer_pretty(&mut *out, &dataset).map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> PhantomOptions {
        PhantomOptions {
            slices: 12,
            size: 64,
            ..PhantomOptions::default()
        }
    }

    #[test]
    fn cases_are_seeded_and_varied() {
        let options = small();
        let a = generate_case(&options, 1, 0);
        assert_eq!(a, generate_case(&options, 1, 0));
        assert_ne!(a.labels, generate_case(&options, 1, 1).labels);
        assert_ne!(a.labels, generate_case(&options, 2, 0).labels);
    }

    #[test]
    fn every_organ_is_present_and_intensity_alone_does_not_separate_them() {
        let case = generate_case(&small(), 3, 0);
        let mut means = Vec::new();
        for label in 1..=3u8 {
            let values: Vec<f64> = case
                .labels
                .iter()
                .zip(case.image.iter())
                .filter(|(&l, _)| l == label)
                .map(|(_, &v)| f64::from(v))
                .collect();
            assert!(values.len() > 50, "label {label} has {} voxels", values.len());
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
            assert!(std >= 15.0, "label {label}: noise σ {std}");
            means.push(mean);
        }
        let spread = means.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            - means.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(spread <= 25.0, "organ means {means:?} within ~20 HU");
    }
}
