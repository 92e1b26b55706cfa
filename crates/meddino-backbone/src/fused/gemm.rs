//! A bounds-checked front to the gemm crate (the kernels candle's CPU matmul uses), for
//! products whose operands are strided views into larger buffers.

use candle_core::{Error, Result};

/// A strided `rows × cols` matrix view: element `(i, j)` is `data[offset + i·row_stride +
/// j·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows × cols` matrix starting at `offset`.
    pub(crate) fn row_major(data: &'a [f32], offset: usize, rows: usize, cols: usize) -> Self {
        Self {
            data,
            offset,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, as a view of the same data.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside `data` (also for empty matrices).
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return self.offset <= self.data.len();
        }
        let last = self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
        last < self.data.len()
    }
}

/// `dst[offset..]` (row-major with `dst_row_stride`) = `lhs · rhs`, plus its previous
/// content when `accumulate`. Uses gemm's rayon parallelism when `parallel`.
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_offset: usize,
    dst_row_stride: usize,
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
    parallel: bool,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let out = MatRef {
        data: dst,
        offset: dst_offset,
        rows: m,
        cols: n,
        row_stride: dst_row_stride,
        col_stride: 1,
    };
    if rhs.rows != k || !lhs.in_bounds() || !rhs.in_bounds() || !out.in_bounds() {
        return Err(Error::Msg(format!(
            "fused matmul: [{m}x{k}] @ [{}x{n}] does not fit its buffers",
            rhs.rows
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: all three views were checked to lie inside their slices, `dst` is borrowed
    // mutably and so aliases neither operand, and gemm reads and writes exactly the
    // elements the views describe.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_offset),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}
