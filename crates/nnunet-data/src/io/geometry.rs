//! Image geometry as SimpleITK reports it for a NIfTI file: spacing, origin and direction in
//! ITK's LPS world and (x, y, z) axis order.
//!
//! The NIfTI affine (RAS) comes from the sform when `sform_code > 0` and its 3×3 part has
//! orthogonal columns, else from the qform when `qform_code > 0`, else it is `diag(pixdim)`
//! with the origin at 0 (the NIfTI library's "method 1", which ITK reads). ITK flips the first
//! two world axes (RAS → LPS); the direction is the normalised columns of the 3×3 part. The
//! spacing is always the header's `pixdim`, even when the sform's column lengths say
//! otherwise: ITK only warns about such "unexpected scales in sform" (SimpleITK 2.5 reads
//! pixdim (0.8, 0.9, 2.5) with an sform of diag(2, 3, 4) as spacing (0.8, 0.9, 2.5)). A zero or
//! non-finite pixdim falls back to the column length. The reference data
//! (`nifti/expected.json`) has both forms agree in every file, so which one wins when they
//! disagree follows ITK's documented preference for a valid sform rather than the data.

use nifti::NiftiHeader;

/// Spacing, origin and direction of an image in ITK's conventions, for its `n` spatial axes
/// (2 or 3): `spacing`/`origin` in (x, y[, z]) order, `direction` row-major `n × n`.
#[derive(Debug, Clone, PartialEq)]
pub struct ItkGeometry {
    /// Voxel size per ITK axis (mm).
    pub spacing: Vec<f64>,
    /// World position of the first voxel (LPS, mm).
    pub origin: Vec<f64>,
    /// Row-major direction cosines: column j is the world direction of ITK axis j.
    pub direction: Vec<f64>,
}

/// A 3×4 affine: rows of `[r0, r1, r2, offset]`.
type Affine = [[f64; 4]; 3];

fn sform(header: &NiftiHeader) -> Affine {
    [header.srow_x, header.srow_y, header.srow_z].map(|row| row.map(f64::from))
}

fn qform(header: &NiftiHeader) -> Affine {
    let (b, c, d) = (
        f64::from(header.quatern_b),
        f64::from(header.quatern_c),
        f64::from(header.quatern_d),
    );
    let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
    let qfac = if header.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let [dx, dy, dz] = [1, 2, 3].map(|i| f64::from(header.pixdim[i]).abs());
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let offset = [header.quatern_x, header.quatern_y, header.quatern_z].map(f64::from);
    [0, 1, 2].map(|i| [r[i][0] * dx, r[i][1] * dy, r[i][2] * dz * qfac, offset[i]])
}

fn method_one(header: &NiftiHeader) -> Affine {
    let p = [1, 2, 3].map(|i| f64::from(header.pixdim[i]).abs());
    [[p[0], 0.0, 0.0, 0.0], [0.0, p[1], 0.0, 0.0], [0.0, 0.0, p[2], 0.0]]
}

/// Whether the 3×3 part has non-zero, mutually orthogonal columns (within float precision).
fn orthogonal(affine: &Affine) -> bool {
    let column = |j: usize| [affine[0][j], affine[1][j], affine[2][j]];
    let dot = |u: [f64; 3], v: [f64; 3]| u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
    let norms: Vec<f64> = (0..3).map(|j| dot(column(j), column(j)).sqrt()).collect();
    norms.iter().all(|&n| n > 0.0)
        && [(0, 1), (0, 2), (1, 2)]
            .iter()
            .all(|&(i, j)| dot(column(i), column(j)).abs() <= 1e-4 * norms[i] * norms[j])
}

/// The geometry SimpleITK reports for a NIfTI header with `n` spatial axes (2 or 3).
pub fn itk_geometry(header: &NiftiHeader, n: usize) -> ItkGeometry {
    let affine = if header.sform_code > 0 && orthogonal(&sform(header)) {
        sform(header)
    } else if header.qform_code > 0 {
        qform(header)
    } else {
        method_one(header)
    };
    // RAS → LPS: negate the first two world rows.
    let lps = |i: usize, j: usize| if i < 2 { -affine[i][j] } else { affine[i][j] };
    let norms: Vec<f64> = (0..3)
        .map(|j| (0..3).map(|i| affine[i][j].powi(2)).sum::<f64>().sqrt())
        .collect();
    let spacing: Vec<f64> = (0..n)
        .map(|j| {
            let pixdim = f64::from(header.pixdim[j + 1]).abs();
            if pixdim > 0.0 && pixdim.is_finite() {
                pixdim
            } else {
                norms[j]
            }
        })
        .collect();
    let origin: Vec<f64> = (0..n).map(|i| lps(i, 3)).collect();
    let direction: Vec<f64> = (0..n)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| lps(i, j) / norms[j].max(f64::MIN_POSITIVE))
        .collect();
    ItkGeometry {
        spacing,
        origin,
        direction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_comes_from_pixdim_even_when_the_sform_scales_differently() {
        // SimpleITK 2.5.7 reads this header as spacing (0.8, 0.9, 2.5): the sform gives the
        // direction and origin only.
        let header = NiftiHeader {
            pixdim: [1.0, 0.8, 0.9, 2.5, 1.0, 1.0, 1.0, 1.0],
            sform_code: 1,
            srow_x: [2.0, 0.0, 0.0, 10.0],
            srow_y: [0.0, 3.0, 0.0, 20.0],
            srow_z: [0.0, 0.0, 4.0, 30.0],
            ..NiftiHeader::default()
        };
        let geometry = itk_geometry(&header, 3);
        assert_eq!(geometry.spacing, vec![0.8f32 as f64, 0.9f32 as f64, 2.5]);
        assert_eq!(geometry.origin, vec![-10.0, -20.0, 30.0]);
        assert_eq!(geometry.direction, vec![-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]);
        // No usable pixdim: the sform's column lengths.
        let header = NiftiHeader {
            pixdim: [1.0, 0.0, f32::NAN, 2.5, 1.0, 1.0, 1.0, 1.0],
            ..header
        };
        assert_eq!(itk_geometry(&header, 3).spacing, vec![2.0, 3.0, 2.5]);
    }
}
