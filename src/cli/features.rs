//! `meddino features`: patch features of one CT slice, as a PCA colour map and a
//! patch-similarity map (the figure of the MedDINOv3 README).

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma, Rgb, RgbImage};
use meddino::backbone::candle::{Device, Tensor};
use meddino::backbone::visualize::{cosine_similarity, ct_demo_normalize, pca_rgb};
use meddino::backbone::{Config, DinoVisionTransformer, StateDict};
use meddino::data::io::read_image;
use meddino::train::plot::save_png;

/// Arguments of `meddino features`.
#[derive(Debug, clap::Args)]
pub struct FeaturesArgs {
    /// Backbone checkpoint: MedDINOv3 `model.pth` (teacher), a DINOv3 hub `.pth`, an nnU-Net
    /// `checkpoint_final.pth` of a MedDINOv3 trainer, safetensors, a Hugging Face transformers
    /// model folder (`config.json` + `model.safetensors`), or `hf:ORG/NAME[@REVISION]` from
    /// the Hugging Face cache (downloaded when missing, unless HF_HUB_OFFLINE is set).
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,

    /// Architecture preset (e.g. meddinov3_vitb16, vitb16, vit_small) [default: the config a
    /// Hugging Face checkpoint declares, else inferred from the checkpoint's shapes when
    /// exactly one preset fits].
    #[arg(long, value_name = "PRESET", conflicts_with = "config")]
    arch: Option<String>,

    /// JSON file of DinoVisionTransformer constructor arguments, for architectures that are
    /// no preset.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The CT image in HU: a 2-D `.npy` (float or integer) or a NIfTI image.
    #[arg(long, value_name = "FILE")]
    image: PathBuf,

    /// Slice (along Z) of a 3-D NIfTI volume [default: the middle one].
    #[arg(long, value_name = "K")]
    slice: Option<usize>,

    /// Side of the square the slice is resized to; a multiple of the patch size.
    #[arg(long, value_name = "N", default_value_t = 448)]
    size: usize,

    /// Pixel `x,y` of the input image whose patch the similarity map compares to all others.
    #[arg(long, value_name = "X,Y", value_parser = parse_point)]
    point: Option<(usize, usize)>,

    /// Output folder for pca.png and similarity.png (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn parse_point(text: &str) -> Result<(usize, usize), String> {
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("expected X,Y in pixels, got {text:?}"))
    };
    match text.split_once(',') {
        Some((x, y)) => Ok((parse(x)?, parse(y)?)),
        None => Err(format!("expected X,Y in pixels, got {text:?}")),
    }
}

/// A 2-D slice: values row-major and its (height, width).
struct Slice {
    values: Vec<f32>,
    height: usize,
    width: usize,
}

fn read_slice(path: &Path, slice: Option<usize>) -> anyhow::Result<Slice> {
    let name = path.to_string_lossy();
    let array: ndarray::ArrayD<f32> = if name.ends_with(".npy") {
        read_npy_as_f32(path)?
    } else {
        read_image(path)?.data
    };
    let slice2d = match array.ndim() {
        2 => array,
        3 => {
            let depth = array.shape()[0];
            let k = slice.unwrap_or(depth / 2);
            ensure!(
                k < depth,
                "{}: slice {k} is out of range (the volume has {depth} slices)",
                path.display()
            );
            array.index_axis(ndarray::Axis(0), k).to_owned()
        }
        _ => bail!(
            "{}: expected a 2-D slice or a 3-D volume, got shape {:?}",
            path.display(),
            array.shape()
        ),
    };
    let (height, width) = (slice2d.shape()[0], slice2d.shape()[1]);
    ensure!(height > 0 && width > 0, "{}: the image is empty", path.display());
    Ok(Slice {
        values: slice2d.iter().copied().collect(),
        height,
        width,
    })
}

/// A `.npy` array of any real element type, as f32.
fn read_npy_as_f32(path: &Path) -> anyhow::Result<ndarray::ArrayD<f32>> {
    use ndarray::ArrayD;
    use ndarray_npy::read_npy;
    macro_rules! try_types {
        ($($t:ty),*) => {$(
            if let Ok(array) = read_npy::<_, ArrayD<$t>>(path) {
                #[allow(clippy::unnecessary_cast)]
                return Ok(array.mapv(|v| v as f32));
            }
        )*};
    }
    try_types!(f32, f64, i16, i32, i64, u8, u16);
    // Read once more for the error: it says why (missing file, bad header, dtype).
    match read_npy::<_, ArrayD<f32>>(path) {
        Ok(array) => Ok(array),
        Err(e) => bail!("{}: cannot read as a real-valued .npy array: {e}", path.display()),
    }
}

/// Runs `meddino features`.
pub fn run(args: FeaturesArgs) -> anyhow::Result<()> {
    let state = StateDict::read(&args.checkpoint)?;
    let cfg = match (&args.arch, &args.config) {
        (Some(arch), _) => Config::preset(arch)?,
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not a backbone config", file.display()))?
        }
        (None, None) => Config::infer(&state).context("pass --arch or --config")?,
    };
    let model = DinoVisionTransformer::from_state_dict(&cfg, &state, &Device::Cpu)?;
    let p = cfg.patch_size;
    ensure!(
        args.size > 0 && args.size % p == 0,
        "--size {} must be a positive multiple of the patch size {p}",
        args.size
    );

    let slice = read_slice(&args.image, args.slice)?;
    if let Some((x, y)) = args.point {
        ensure!(
            x < slice.width && y < slice.height,
            "--point {x},{y} is outside the {}×{} image",
            slice.width,
            slice.height
        );
    }
    let mut normalized = slice.values.clone();
    ct_demo_normalize(&mut normalized);
    let buffer: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(slice.width as u32, slice.height as u32, normalized).context("image buffer")?;
    // Bilinear with a widened filter when shrinking: an antialiased resize.
    let resized = imageops::resize(&buffer, args.size as u32, args.size as u32, FilterType::Triangle).into_raw();

    let s = args.size;
    let channel = Tensor::from_vec(resized.clone(), (1, 1, s, s), &Device::Cpu)?;
    let xs = channel.repeat((1, cfg.in_chans, 1, 1))?;
    let features = model.forward_features(&xs)?.x_norm_patchtokens;
    let (_, n, d) = features.dims3()?;
    let features: Vec<f32> = features.flatten_all()?.to_vec1()?;
    let grid = s / p;

    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let gray = grayscale(&resized, s);
    let pca = upscale(&pca_rgb(&features, n, d), grid, p);
    save_png(&args.out.join("pca.png"), &side_by_side(&gray, &pca))?;
    eprintln!("wrote {}", args.out.join("pca.png").display());

    if let Some((x, y)) = args.point {
        let (rx, ry) = (x * s / slice.width, y * s / slice.height);
        let query = (ry / p) * grid + rx / p;
        let similarity = cosine_similarity(&features, n, d, query);
        let colours: Vec<[f32; 3]> = similarity.iter().map(|&v| inferno((v + 1.0) / 2.0)).collect();
        let mut left = gray.clone();
        let mut right = upscale(&colours, grid, p);
        mark(&mut left, rx, ry);
        mark(&mut right, rx, ry);
        save_png(&args.out.join("similarity.png"), &side_by_side(&left, &right))?;
        eprintln!(
            "wrote {} (patch row {}, column {})",
            args.out.join("similarity.png").display(),
            ry / p,
            rx / p
        );
    }
    Ok(())
}

/// The normalised slice as grey, min to max.
fn grayscale(values: &[f32], side: usize) -> RgbImage {
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
    RgbImage::from_fn(side as u32, side as u32, |x, y| {
        let v = ((values[y as usize * side + x as usize] - lo) * scale) as u8;
        Rgb([v, v, v])
    })
}

/// One colour per patch, each patch `p × p` pixels.
fn upscale(colours: &[[f32; 3]], grid: usize, p: usize) -> RgbImage {
    let side = (grid * p) as u32;
    RgbImage::from_fn(side, side, |x, y| {
        let c = colours[(y as usize / p) * grid + x as usize / p];
        Rgb(c.map(|v| (v.clamp(0.0, 1.0) * 255.0) as u8))
    })
}

fn side_by_side(left: &RgbImage, right: &RgbImage) -> RgbImage {
    let mut out = RgbImage::new(left.width() + right.width(), left.height().max(right.height()));
    imageops::replace(&mut out, left, 0, 0);
    imageops::replace(&mut out, right, i64::from(left.width()), 0);
    out
}

/// A red cross at the query point.
fn mark(image: &mut RgbImage, x: usize, y: usize) {
    let red = Rgb([255, 32, 32]);
    for offset in -5i64..=5 {
        for (px, py) in [(x as i64 + offset, y as i64), (x as i64, y as i64 + offset)] {
            if px >= 0 && py >= 0 && (px as u32) < image.width() && (py as u32) < image.height() {
                image.put_pixel(px as u32, py as u32, red);
            }
        }
    }
}

/// The inferno colour map at `t` in [0, 1] (five anchors, linear in between).
fn inferno(t: f32) -> [f32; 3] {
    const ANCHORS: [[f32; 3]; 5] = [
        [0.0, 0.0, 0.016],
        [0.341, 0.063, 0.431],
        [0.737, 0.216, 0.329],
        [0.976, 0.557, 0.035],
        [0.988, 1.0, 0.643],
    ];
    let t = t.clamp(0.0, 1.0) * (ANCHORS.len() - 1) as f32;
    let i = (t as usize).min(ANCHORS.len() - 2);
    let f = t - i as f32;
    [0, 1, 2].map(|c| ANCHORS[i][c] + (ANCHORS[i + 1][c] - ANCHORS[i][c]) * f)
}
