//! Times scoring a folder of predictions: reading the label maps, then Dice, HD95 and NSD
//! for every foreground class, cases in parallel.
//!
//! ```text
//! cargo run --release -p meddino-eval --example metrics_bench -- DIR_PRED DIR_LABELS DATASET_JSON [--surfel]
//! cargo run --release -p meddino-eval --example metrics_bench -- --generate DIR [--cases 3] [--size 512x512x100] [--noise 0.001]
//! ```
//!
//! `--generate` writes a synthetic folder (`DIR/pred`, `DIR/labels`, `DIR/dataset.json`) of
//! CT-sized label maps with 5 ellipsoid organs, the predictions shifted and scaled a little,
//! spacing 0.8×0.8×2.5 mm. `--noise F` also sets a fraction F of all prediction voxels, spread
//! at random over the volume, to a random label (background included): the scattered
//! false-positive islands of an undertrained model. The last line printed is
//! `seconds=<total>`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use meddino_eval::{evaluate_case, CaseOptions, SurfaceMethod};
use ndarray::{Array3, ShapeBuilder};
use nnunet_data::io::read_label_map;
use nnunet_data::{DatasetJson, LabelValue};
use rayon::prelude::*;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Times `evaluate` on a folder of predictions, or writes a synthetic one.
#[derive(Debug, Parser)]
struct Args {
    /// Predictions, labels and dataset.json to score (unless --generate).
    #[arg(num_args = 0..=3)]
    paths: Vec<PathBuf>,
    /// Score with DeepMind's surface elements instead of MONAI's boundary voxels.
    #[arg(long)]
    surfel: bool,
    /// Write a synthetic folder here instead of scoring.
    #[arg(long, value_name = "DIR")]
    generate: Option<PathBuf>,
    /// Cases to generate.
    #[arg(long, default_value_t = 3)]
    cases: usize,
    /// Volume size to generate, XxYxZ.
    #[arg(long, default_value = "512x512x100")]
    size: String,
    /// Fraction of prediction voxels set to a random label when generating.
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    if let Some(dir) = &args.generate {
        let dims: Vec<usize> = args.size.split('x').map(str::parse).collect::<Result<_, _>>()?;
        let [x, y, z] = dims[..] else {
            return Err(format!("--size wants XxYxZ, got {}", args.size).into());
        };
        if !(0.0..=1.0).contains(&args.noise) {
            return Err(format!("--noise wants a fraction in [0, 1], got {}", args.noise).into());
        }
        return generate(dir, args.cases, (z, y, x), args.noise);
    }
    let [pred, labels, dataset] = &args.paths[..] else {
        return Err("give DIR_PRED DIR_LABELS DATASET_JSON, or --generate DIR".into());
    };
    let method = if args.surfel {
        SurfaceMethod::Surfel
    } else {
        SurfaceMethod::Monai
    };
    bench(pred, labels, dataset, method)
}

fn bench(pred: &Path, labels: &Path, dataset: &Path, method: SurfaceMethod) -> Result<(), Error> {
    let dataset = DatasetJson::read(dataset)?;
    let ending = dataset.file_ending.clone().unwrap_or_else(|| ".nii.gz".into());
    let classes: Vec<u16> = dataset
        .foreground()
        .filter_map(|e| match e.value {
            LabelValue::Label(v) => u16::try_from(v).ok(),
            LabelValue::Region(_) => None,
        })
        .collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(pred)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(&ending))
        .collect();
    files.sort();

    let start = Instant::now();
    let pairs = files
        .par_iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_owned()).unwrap_or_default();
            // Both files of a pair at once: 3 pairs would leave one of 2 threads idle.
            let (prediction, label) = rayon::join(|| read_label_map(p), || read_label_map(&labels.join(name)));
            Ok((prediction?, label?))
        })
        .collect::<Result<Vec<_>, nnunet_data::Error>>()?;
    let read = start.elapsed().as_secs_f64();
    let options = CaseOptions::new().with_method(method);
    let scoring = Instant::now();
    let scores = pairs
        .par_iter()
        .map(|(p, l)| evaluate_case(p.data.view(), l.data.view(), &l.spacing, &classes, &options))
        .collect::<Result<Vec<_>, _>>()?;
    let score = scoring.elapsed().as_secs_f64();
    let total = start.elapsed().as_secs_f64();

    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "case", "mean dice", "mean hd95", "mean nsd"
    );
    for (file, case) in files.iter().zip(&scores) {
        let mean = |f: fn(&meddino_eval::ClassScores) -> f64| case.iter().map(f).sum::<f64>() / case.len() as f64;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "{name:<28} {:>10.4} {:>10.3} {:>10.4}",
            mean(|s| s.dice),
            mean(|s| s.hd95),
            mean(|s| s.nsd)
        );
    }
    let shape = pairs
        .first()
        .map(|(p, _)| format!("{:?}", p.data.shape()))
        .unwrap_or_default();
    println!(
        "{} cases {shape}, {} classes, method {method}, {} threads: read {read:.3} s, score {score:.3} s",
        files.len(),
        classes.len(),
        rayon::current_num_threads()
    );
    println!("seconds={total:.3}");
    Ok(())
}

/// Five ellipsoid organs: (centre as a fraction of the volume (z, y, x), radii in voxels).
const ORGANS: [([f64; 3], [f64; 3]); 5] = [
    ([0.50, 0.45, 0.35], [30.0, 90.0, 80.0]),
    ([0.45, 0.40, 0.70], [20.0, 45.0, 40.0]),
    ([0.40, 0.60, 0.25], [15.0, 35.0, 30.0]),
    ([0.55, 0.60, 0.75], [15.0, 35.0, 30.0]),
    ([0.30, 0.30, 0.55], [10.0, 25.0, 20.0]),
];

fn phantom(shape: (usize, usize, usize), case: usize, perturbed: bool) -> Array3<f32> {
    let (nz, ny, nx) = shape;
    let mut volume = Array3::<f32>::zeros(shape);
    for (label, (centre, radii)) in ORGANS.iter().enumerate() {
        let wobble = (case as f64 + 1.0) * 0.02;
        let (shift, scale) = if perturbed {
            ((label % 3) as f64 + 1.0, 1.0 + wobble)
        } else {
            (0.0, 1.0)
        };
        let c = [
            centre[0] * nz as f64,
            centre[1] * ny as f64 + shift,
            centre[2] * nx as f64 - shift,
        ];
        let r = radii.map(|r| r * scale * (1.0 - wobble));
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let d = [z as f64 - c[0], y as f64 - c[1], x as f64 - c[2]];
                    if (0..3).map(|a| (d[a] / r[a]).powi(2)).sum::<f64>() <= 1.0 {
                        volume[[z, y, x]] = (label + 1) as f32;
                    }
                }
            }
        }
    }
    volume
}

fn write(path: &Path, volume: &Array3<f32>) -> Result<(), Error> {
    let mut header = nifti::NiftiHeader::default();
    header.pixdim[1..4].copy_from_slice(&[0.8, 0.8, 2.5]);
    let xyz = volume.view().reversed_axes();
    let fortran = Array3::from_shape_vec(xyz.raw_dim().f(), xyz.t().iter().map(|&v| v as u8).collect())?;
    nifti::writer::WriterOptions::new(path)
        .reference_header(&header)
        .write_nifti(&fortran)?;
    Ok(())
}

/// Sets `fraction` of the voxels, chosen by a seeded generator, to labels 0..=organs.
fn add_noise(volume: &mut Array3<f32>, fraction: f64, seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64*: plenty for spreading points, and no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11
    };
    let voxels = volume.len();
    let count = (fraction * voxels as f64).round() as usize;
    if let Some(flat) = volume.as_slice_mut() {
        for _ in 0..count {
            let index = (next() % voxels as u64) as usize;
            flat[index] = (next() % (ORGANS.len() as u64 + 1)) as f32;
        }
    }
}

fn generate(dir: &Path, cases: usize, shape: (usize, usize, usize), noise: f64) -> Result<(), Error> {
    for sub in ["pred", "labels"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let labels: String = (1..=ORGANS.len()).map(|i| format!(", \"organ{i}\": {i}")).collect();
    let dataset = format!(
        "{{\"channel_names\": {{\"0\": \"CT\"}}, \"labels\": {{\"background\": 0{labels}}}, \"numTraining\": {cases}, \"file_ending\": \".nii.gz\"}}\n"
    );
    std::fs::write(dir.join("dataset.json"), dataset)?;
    (0..cases).into_par_iter().try_for_each(|case| -> Result<(), Error> {
        let name = format!("case_{case:03}.nii.gz");
        write(&dir.join("labels").join(&name), &phantom(shape, case, false))?;
        let mut prediction = phantom(shape, case, true);
        add_noise(&mut prediction, noise, case as u64 + 1);
        write(&dir.join("pred").join(&name), &prediction)?;
        Ok(())
    })?;
    println!(
        "wrote {cases} cases of shape {shape:?} (z, y, x), noise {noise}, to {}",
        dir.display()
    );
    Ok(())
}
