//! From the slices' headers to one volume's slice order and geometry, as SimpleITK's
//! `ImageSeriesReader` gives it for the files `GetGDCMSeriesFileNames` lists, with the checks
//! SimpleITK leaves out.
//!
//! - Order: ascending position along the slice normal `n = row × column` (GDCM's
//!   `SerieHelper` ordering by `n · ImagePositionPatient`).
//! - Origin: the first slice's ImagePositionPatient.
//! - Direction: columns `row`, `column`, `n` (ITK's GDCMImageIO; `ImageSeriesReader` keeps it
//!   orthogonal), row-major.
//! - Spacing: (PixelSpacing\[1\], PixelSpacing\[0\], |last − first position| / (slices − 1)).
//!
//! Refused: several SeriesInstanceUIDs, slices that disagree in orientation, size or pixel
//! format, positions off the line along the normal (gantry tilt) and non-uniform gaps; see
//! [`super::DicomReadOptions`] for the tolerances.

use std::path::Path;

use super::header::SliceHeader;
use super::DicomReadOptions;
use crate::error::{Error, Result};
use crate::io::ItkGeometry;

/// Slices whose orientation cosines differ by more than this are not one volume.
const ORIENTATION_TOLERANCE: f64 = 1e-4;

/// Relative difference of PixelSpacing allowed between slices.
const PIXEL_SPACING_TOLERANCE: f64 = 1e-5;

/// The slices of one series in volume order, with its geometry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeriesLayout {
    /// Indices into the headers, first slice first.
    pub order: Vec<usize>,
    /// Origin, spacing, direction in ITK's (x, y, z) order.
    pub geometry: ItkGeometry,
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

/// Checks that every slice agrees with the first (in file-name order) on what makes them one
/// volume.
fn check_consistent(folder: &Path, slices: &[SliceHeader]) -> Result<()> {
    let Some(first) = slices.first() else {
        return Err(Error::NoDicomFiles {
            path: folder.to_path_buf(),
        });
    };
    for other in &slices[1..] {
        if other.series_uid != first.series_uid {
            return Err(Error::MixedSeries {
                first_uid: first.series_uid.clone(),
                first: first.path.clone(),
                other_uid: other.series_uid.clone(),
                other: other.path.clone(),
            });
        }
    }
    for other in &slices[1..] {
        let differs = |attribute: &'static str, a: String, b: String| Error::InconsistentSlices {
            first: first.path.clone(),
            other: other.path.clone(),
            attribute,
            first_value: a.into(),
            other_value: b.into(),
        };
        if first
            .orientation
            .iter()
            .zip(&other.orientation)
            .any(|(a, b)| (a - b).abs() > ORIENTATION_TOLERANCE)
        {
            return Err(Error::InconsistentOrientation {
                first: first.path.clone(),
                first_value: Box::new(first.orientation),
                other: other.path.clone(),
                other_value: Box::new(other.orientation),
            });
        }
        if first.rows != other.rows {
            return Err(differs("Rows", first.rows.to_string(), other.rows.to_string()));
        }
        if first.columns != other.columns {
            return Err(differs("Columns", first.columns.to_string(), other.columns.to_string()));
        }
        if first
            .pixel_spacing
            .iter()
            .zip(&other.pixel_spacing)
            .any(|(a, b)| (a - b).abs() > PIXEL_SPACING_TOLERANCE * a.abs())
        {
            return Err(differs(
                "PixelSpacing",
                format!("{:?}", first.pixel_spacing),
                format!("{:?}", other.pixel_spacing),
            ));
        }
        if first.bits_allocated != other.bits_allocated {
            return Err(differs(
                "BitsAllocated",
                first.bits_allocated.to_string(),
                other.bits_allocated.to_string(),
            ));
        }
    }
    Ok(())
}

/// The volume order and geometry of `slices` (one series, in file-name order).
///
/// # Errors
///
/// As the module docs list; a series of a single slice is refused too (no slice spacing).
pub(crate) fn layout(folder: &Path, slices: &[SliceHeader], options: &DicomReadOptions) -> Result<SeriesLayout> {
    check_consistent(folder, slices)?;
    let first = &slices[0];
    if slices.len() < 2 {
        return Err(Error::InvalidTag {
            path: first.path.clone(),
            tag: "ImagePositionPatient (0020,0032)".into(),
            value: "one slice".into(),
            expected: "a series of at least 2 slices (a slice spacing)".into(),
        });
    }
    let [r0, r1, r2, c0, c1, c2] = first.orientation;
    let (row, column) = ([r0, r1, r2], [c0, c1, c2]);
    let normal = cross(row, column);
    let along: Vec<f64> = slices.iter().map(|s| dot(normal, s.position)).collect();
    let mut order: Vec<usize> = (0..slices.len()).collect();
    // Stable: equal positions keep file-name order (and are refused below as a zero gap).
    order.sort_by(|&a, &b| along[a].total_cmp(&along[b]));
    let head = &slices[order[0]];
    let tail = &slices[order[order.len() - 1]];
    let tolerance = |length: f64| options.absolute_tolerance_mm + options.relative_tolerance * length.abs();

    // Gantry tilt: every position on the line through the first along the normal.
    let mut worst: Option<(f64, usize, f64, f64)> = None; // (excess, index, off-line, along)
    for &k in &order[1..] {
        let offset = sub(slices[k].position, head.position);
        let distance = dot(offset, normal);
        let off_line = norm(sub(offset, normal.map(|n| n * distance)));
        let excess = off_line - tolerance(distance);
        if excess > 0.0 && worst.is_none_or(|w| excess > w.0) {
            worst = Some((excess, k, off_line, distance));
        }
    }
    if let Some((_, k, off_line, distance)) = worst {
        return Err(Error::GantryTilt {
            first: head.path.clone(),
            other: slices[k].path.clone(),
            angle_degrees: off_line.atan2(distance.abs()).to_degrees(),
            off_line,
            tolerance: tolerance(distance),
        });
    }

    // Uniform gaps along the normal: each within the tolerance of the median gap (the
    // series' regular spacing, so a missing slice is the gap named), the worst one reported.
    let gaps: Vec<(f64, usize, usize)> = order
        .windows(2)
        .map(|p| (along[p[1]] - along[p[0]], p[0], p[1]))
        .collect();
    let mut sorted: Vec<f64> = gaps.iter().map(|g| g.0).collect();
    sorted.sort_by(f64::total_cmp);
    let expected = sorted[sorted.len() / 2];
    let worst = gaps
        .iter()
        .filter(|(gap, _, _)| (gap - expected).abs() > tolerance(expected) || *gap <= 0.0)
        .max_by(|a, b| (a.0 - expected).abs().total_cmp(&(b.0 - expected).abs()));
    if let Some(&(gap, a, b)) = worst {
        return Err(Error::NonUniformSpacing {
            first: slices[a].path.clone(),
            second: slices[b].path.clone(),
            from: along[a],
            to: along[b],
            gap,
            expected,
            tolerance: tolerance(expected),
        });
    }

    // ITK's ImageSeriesReader: the distance from first to last over the number of gaps.
    let z_spacing = norm(sub(tail.position, head.position)) / (slices.len() - 1) as f64;
    let direction = (0..3).flat_map(|i| [row[i], column[i], normal[i]]).collect();
    Ok(SeriesLayout {
        order,
        geometry: ItkGeometry {
            spacing: vec![first.pixel_spacing[1], first.pixel_spacing[0], z_spacing],
            origin: head.position.to_vec(),
            direction,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, position: [f64; 3]) -> SliceHeader {
        SliceHeader {
            path: name.into(),
            series_uid: "1.2.3".into(),
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            position,
            pixel_spacing: [0.5, 0.75],
            rows: 4,
            columns: 3,
            bits_allocated: 16,
            bits_stored: 16,
            signed: true,
            slope: 1.0,
            intercept: 0.0,
        }
    }

    #[test]
    fn slices_are_ordered_along_the_normal_and_spaced_by_their_positions() {
        let slices = [
            slice("b", [1.0, 2.0, 5.0]),
            slice("a", [1.0, 2.0, 2.5]),
            slice("c", [1.0, 2.0, 0.0]),
        ];
        let layout = layout(Path::new("series"), &slices, &DicomReadOptions::default()).expect("layout");
        assert_eq!(layout.order, vec![2, 1, 0]);
        assert_eq!(layout.geometry.origin, vec![1.0, 2.0, 0.0]);
        // (PixelSpacing[1], PixelSpacing[0], gap)
        assert_eq!(layout.geometry.spacing, vec![0.75, 0.5, 2.5]);
        assert_eq!(
            layout.geometry.direction,
            vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn gaps_within_the_tolerance_pass_and_beyond_it_are_named() {
        // 2.5 mm gaps with 3 µm jitter (gaps 6 µm apart, under 5 µm + 1e-3 × 2.5 mm) pass.
        let jittered = [
            slice("a", [0.0; 3]),
            slice("b", [0.0, 0.0, 2.503]),
            slice("c", [0.0, 0.0, 5.0]),
        ];
        assert!(layout(Path::new("s"), &jittered, &DicomReadOptions::default()).is_ok());
        let duplicated = [slice("a", [0.0; 3]), slice("b", [0.0; 3]), slice("c", [0.0, 0.0, 5.0])];
        let error = layout(Path::new("s"), &duplicated, &DicomReadOptions::default()).expect_err("zero gap");
        assert!(
            matches!(error, Error::NonUniformSpacing { gap, .. } if gap == 0.0),
            "{error}"
        );
    }
}
