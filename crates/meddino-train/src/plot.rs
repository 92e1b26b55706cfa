//! `progress.png`, as nnU-Net draws it after every epoch: losses with the pseudo Dice and
//! its EMA, epoch durations, and the learning rate, over epochs.
//!
//! Drawn with embedded-graphics (lines and its built-in bitmap font) onto an `image` buffer:
//! no plotting crate renders text without system fonts or a font file we would ship.

use std::io::Write;
use std::path::Path;

use embedded_graphics::mono_font::ascii::FONT_6X10;
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Circle, Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};
use image::{ImageEncoder, RgbImage};

use crate::error::{Error, Result};
use crate::logs::TrainingLogs;

/// An `image` buffer as an embedded-graphics target.
struct Canvas(RgbImage);

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        for Pixel(point, color) in pixels {
            if let (Ok(x), Ok(y)) = (u32::try_from(point.x), u32::try_from(point.y)) {
                if x < self.0.width() && y < self.0.height() {
                    self.0.put_pixel(x, y, image::Rgb([color.r(), color.g(), color.b()]));
                }
            }
        }
        Ok(())
    }
}

const BLUE: Rgb888 = Rgb888::new(31, 119, 180);
const RED: Rgb888 = Rgb888::new(214, 39, 40);
const GREEN: Rgb888 = Rgb888::new(44, 160, 44);
const GREY: Rgb888 = Rgb888::new(200, 200, 200);

/// One line of a panel.
struct Series<'a> {
    label: &'a str,
    values: &'a [f64],
    color: Rgb888,
    /// Dots instead of a line (nnU-Net draws the raw pseudo Dice dotted).
    dotted: bool,
    /// Plotted against the right axis.
    right: bool,
}

/// Where a panel's plot area lies and the value ranges of its axes.
struct Frame {
    area: Rectangle,
    epochs: usize,
    left: (f64, f64),
    right: (f64, f64),
}

impl Frame {
    fn point(&self, epoch: usize, value: f64, right: bool) -> Point {
        let (lo, hi) = if right { self.right } else { self.left };
        let width = self.area.size.width as f64;
        let height = self.area.size.height as f64;
        let x = epoch as f64 / (self.epochs.max(2) - 1) as f64 * width;
        let y = (1.0 - (value - lo) / (hi - lo).max(1e-12)) * height;
        self.area.top_left + Point::new(x.round() as i32, y.round() as i32)
    }
}

/// The finite range of the values, widened when flat; padded by 5 %, but not below zero
/// for values that are never negative (a learning rate, a duration).
fn range<'a>(values: impl Iterator<Item = &'a f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        (0.0, 1.0)
    } else if hi - lo < 1e-9 {
        (lo - 0.5 * lo.abs().max(1e-3), hi + 0.5 * hi.abs().max(1e-3))
    } else {
        let pad = 0.05 * (hi - lo);
        let floor = if lo >= 0.0 { 0.0 } else { f64::NEG_INFINITY };
        ((lo - pad).max(floor), hi + pad)
    }
}

/// Labels of ticks `step` apart around `value`, with as many digits as tell neighbouring
/// ticks apart: fixed-point between 1e-3 and 1e4, scientific outside.
fn label(value: f64, step: f64) -> String {
    let magnitude = value.abs();
    let step = step.abs().max(f64::MIN_POSITIVE);
    if magnitude < step * 1e-9 {
        "0".into()
    } else if !(1e-3..1e4).contains(&magnitude) {
        // Significant digits: those of the value down to the step's, plus one.
        let digits = ((magnitude / step).log10().ceil().max(0.0) as usize + 1).min(6);
        format!("{value:.*e}", digits.saturating_sub(1).max(1))
    } else {
        let decimals = (1.0 - step.log10().floor()).clamp(0.0, 6.0) as usize;
        format!("{value:.decimals$}")
    }
}

fn draw_panel(canvas: &mut Canvas, top: i32, title: &str, series: &[Series<'_>], right_axis: Option<&str>) {
    let text = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
    let epochs = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let frame = Frame {
        area: Rectangle::new(Point::new(80, top + 24), Size::new(820, 230)),
        epochs,
        left: range(series.iter().filter(|s| !s.right).flat_map(|s| s.values.iter())),
        right: (0.0, 1.0),
    };
    let area = frame.area;
    let bottom_right = area.bottom_right().unwrap_or(area.top_left);
    let _ = Text::new(title, Point::new(area.top_left.x, top + 14), text).draw(canvas);
    // Grid and tick labels.
    for i in 0..=4 {
        let fraction = f64::from(i) / 4.0;
        let y = area.top_left.y + (fraction * f64::from(area.size.height)).round() as i32;
        let _ = Line::new(Point::new(area.top_left.x, y), Point::new(bottom_right.x, y))
            .into_styled(PrimitiveStyle::with_stroke(GREY, 1))
            .draw(canvas);
        let (lo, hi) = frame.left;
        let left_value = hi - fraction * (hi - lo);
        let _ = Text::with_alignment(
            &label(left_value, (hi - lo) / 4.0),
            Point::new(area.top_left.x - 4, y + 3),
            text,
            Alignment::Right,
        )
        .draw(canvas);
        if right_axis.is_some() {
            let right_value = 1.0 - fraction;
            let _ = Text::new(
                &format!("{right_value:.2}"),
                Point::new(bottom_right.x + 4, y + 3),
                text,
            )
            .draw(canvas);
        }
    }
    let last_epoch = epochs.saturating_sub(1);
    for (i, epoch) in [0, last_epoch / 2, last_epoch].into_iter().enumerate() {
        if i > 0 && epoch == 0 {
            continue;
        }
        let x = frame.point(epoch, 0.0, false).x;
        let _ = Text::with_alignment(
            &epoch.to_string(),
            Point::new(x, bottom_right.y + 14),
            text,
            Alignment::Center,
        )
        .draw(canvas);
    }
    let _ = Text::with_alignment(
        "epoch",
        Point::new(area.center().x, bottom_right.y + 26),
        text,
        Alignment::Center,
    )
    .draw(canvas);
    if let Some(name) = right_axis {
        let _ = Text::new(name, Point::new(bottom_right.x - 60, top + 14), text).draw(canvas);
    }
    let _ = area
        .into_styled(PrimitiveStyle::with_stroke(Rgb888::BLACK, 1))
        .draw(canvas);
    // Series, and their legend in the title row.
    for (k, s) in series.iter().enumerate() {
        let points: Vec<Option<Point>> = s
            .values
            .iter()
            .enumerate()
            .map(|(e, &v)| v.is_finite().then(|| frame.point(e, v, s.right)))
            .collect();
        if s.dotted || points.len() == 1 {
            for p in points.iter().flatten() {
                let _ = Circle::with_center(*p, 3)
                    .into_styled(PrimitiveStyle::with_fill(s.color))
                    .draw(canvas);
            }
        } else {
            for pair in points.windows(2) {
                if let [Some(a), Some(b)] = pair {
                    let _ = Line::new(*a, *b)
                        .into_styled(PrimitiveStyle::with_stroke(s.color, 2))
                        .draw(canvas);
                }
            }
        }
        let legend = Point::new(area.top_left.x + 140 * (k as i32 + 1), top + 14);
        let _ = Rectangle::new(legend - Point::new(0, 6), Size::new(12, 6))
            .into_styled(PrimitiveStyle::with_fill(s.color))
            .draw(canvas);
        let _ = Text::new(s.label, legend + Point::new(16, 0), text).draw(canvas);
    }
}

/// Renders the three panels of `progress.png`.
pub fn render_progress(logs: &TrainingLogs) -> RgbImage {
    const PANEL: i32 = 290;
    let mut canvas = Canvas(RgbImage::from_pixel(
        960,
        (3 * PANEL) as u32,
        image::Rgb([255, 255, 255]),
    ));
    let durations: Vec<f64> = logs
        .epoch_start_timestamps
        .iter()
        .zip(&logs.epoch_end_timestamps)
        .map(|(start, end)| end - start)
        .collect();
    draw_panel(
        &mut canvas,
        0,
        "loss and pseudo Dice",
        &[
            Series {
                label: "train loss",
                values: &logs.train_losses,
                color: BLUE,
                dotted: false,
                right: false,
            },
            Series {
                label: "val loss",
                values: &logs.val_losses,
                color: RED,
                dotted: false,
                right: false,
            },
            Series {
                label: "pseudo dice",
                values: &logs.mean_fg_dice,
                color: GREEN,
                dotted: true,
                right: true,
            },
            Series {
                label: "pseudo dice (EMA)",
                values: &logs.ema_fg_dice,
                color: GREEN,
                dotted: false,
                right: true,
            },
        ],
        Some("pseudo dice"),
    );
    draw_panel(
        &mut canvas,
        PANEL,
        "epoch duration [s]",
        &[Series {
            label: "epoch duration",
            values: &durations,
            color: BLUE,
            dotted: false,
            right: false,
        }],
        None,
    );
    draw_panel(
        &mut canvas,
        2 * PANEL,
        "learning rate",
        &[Series {
            label: "learning rate",
            values: &logs.lrs,
            color: BLUE,
            dotted: false,
            right: false,
        }],
        None,
    );
    canvas.0
}

/// Label colours of overlays (label 1, 2, 3, …; repeating).
const LABEL_COLOURS: [[u8; 3]; 6] = [
    [230, 57, 70],
    [42, 157, 143],
    [69, 123, 230],
    [244, 162, 97],
    [168, 85, 247],
    [233, 196, 106],
];

/// One row of an overlay figure: a CT slice in HU with its reference and predicted labels
/// (all `[H, W]`).
#[derive(Debug, Clone, Copy)]
pub struct OverlayRow<'a> {
    /// The slice in Hounsfield units.
    pub image: ndarray::ArrayView2<'a, f32>,
    /// Reference labels.
    pub truth: ndarray::ArrayView2<'a, i32>,
    /// Predicted labels.
    pub prediction: ndarray::ArrayView2<'a, i32>,
}

/// Rows of (image, ground truth, prediction): the slice in a soft-tissue window
/// (W 400, L 40), then the same slice with each label's colour blended in, each panel
/// scaled by `zoom`.
pub fn render_overlays(rows: &[OverlayRow<'_>], zoom: u32) -> RgbImage {
    let zoom = zoom.max(1);
    let (h, w) = rows.first().map_or((0, 0), |r| r.image.dim());
    let (ph, pw) = (h as u32 * zoom, w as u32 * zoom);
    let gap = 4;
    let mut out = RgbImage::from_pixel(
        3 * pw + 2 * gap,
        rows.len() as u32 * (ph + gap),
        image::Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (panel, labels) in [None, Some(row.truth), Some(row.prediction)].into_iter().enumerate() {
            for (y, x) in (0..ph).flat_map(|y| (0..pw).map(move |x| (y, x))) {
                let (sy, sx) = ((y / zoom) as usize, (x / zoom) as usize);
                let grey = ((row.image[[sy, sx]] - (40.0 - 200.0)) / 400.0).clamp(0.0, 1.0) * 255.0;
                let mut pixel = [grey; 3];
                if let Some(label) = labels.map(|l| l[[sy, sx]]).filter(|&l| l > 0) {
                    let colour = LABEL_COLOURS[(label as usize - 1) % LABEL_COLOURS.len()];
                    for (p, c) in pixel.iter_mut().zip(colour) {
                        *p = 0.45 * *p + 0.55 * f32::from(c);
                    }
                }
                out.put_pixel(
                    panel as u32 * (pw + gap) + x,
                    r as u32 * (ph + gap) + y,
                    image::Rgb(pixel.map(|v| v as u8)),
                );
            }
        }
    }
    out
}

/// Encodes `image` as PNG and writes it atomically.
///
/// # Errors
///
/// When the file cannot be written; it names the path.
pub fn save_png(path: &Path, image: &RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
    nnunet_data::io::write_atomic(path, |out: &mut dyn Write| out.write_all(&bytes))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_colour_labels_in_the_label_panels_only() {
        let image = ndarray::Array2::from_elem((4, 5), 40f32);
        let mut truth = ndarray::Array2::<i32>::zeros((4, 5));
        truth[[1, 1]] = 1;
        let prediction = ndarray::Array2::<i32>::zeros((4, 5));
        let row = OverlayRow {
            image: image.view(),
            truth: truth.view(),
            prediction: prediction.view(),
        };
        let out = render_overlays(&[row], 2);
        assert_eq!((out.width(), out.height()), (3 * 10 + 8, 8 + 4));
        let grey = out.get_pixel(0, 0).0;
        assert_eq!(grey[0], grey[1], "the image panel is grey");
        assert_ne!(out.get_pixel(14 + 2, 2).0, grey, "truth label coloured");
        assert_eq!(out.get_pixel(28 + 2, 2).0, grey, "no predicted label");
    }

    #[test]
    fn tick_labels_tell_neighbouring_ticks_apart() {
        // The demo's learning rate, 2e-3 falling to about 0: five distinct labels, none below 0.
        let (lo, hi) = range([2e-3, 1e-3, 4.3e-5].iter());
        assert_eq!(lo, 0.0);
        let labels: Vec<String> = (0..=4)
            .map(|i| label(hi - f64::from(i) / 4.0 * (hi - lo), (hi - lo) / 4.0))
            .collect();
        let distinct: std::collections::BTreeSet<&String> = labels.iter().collect();
        assert_eq!(distinct.len(), 5, "{labels:?}");
        assert_eq!(label(0.5, 0.25), "0.50");
        assert_eq!(label(0.0, 5e-4), "0");
        assert_eq!(label(-0.262, 0.3), "-0.26");
        assert_eq!(label(11.43, 0.22), "11.43");
        assert_eq!(label(4.8e-4, 5e-4), "4.8e-4");
        assert_eq!(label(1.5e-5, 1e-6), "1.50e-5");
        // Losses go below zero: padding may too.
        assert!(range([-0.9, 0.3].iter()).0 < -0.9);
    }

    #[test]
    fn draws_series_in_their_colours() {
        let logs = TrainingLogs {
            mean_fg_dice: vec![0.1, 0.4, 0.6],
            ema_fg_dice: vec![0.1, 0.13, 0.177],
            train_losses: vec![0.5, -0.2, -0.5],
            val_losses: vec![0.4, -0.1, -0.4],
            lrs: vec![3e-4, 2e-4, 1e-4],
            epoch_start_timestamps: vec![0.0, 10.0, 20.0],
            epoch_end_timestamps: vec![9.0, 19.5, 29.0],
            ..TrainingLogs::default()
        };
        let image = render_progress(&logs);
        let count = |c: Rgb888| image.pixels().filter(|p| p.0 == [c.r(), c.g(), c.b()]).count();
        assert!(count(BLUE) > 500 && count(RED) > 100 && count(GREEN) > 100);
        // Empty logs (before the first epoch ends) still render.
        let _ = render_progress(&TrainingLogs::default());
    }
}
