//! One slice's pixel data to Hounsfield units: decoded by dicom-pixeldata (native, deflated,
//! RLE and JPEG transfer syntaxes), the stored values cut to BitsStored (sign-extended when
//! PixelRepresentation is 1), then `stored · RescaleSlope + RescaleIntercept` in f64 and
//! rounded once to f32 (as GDCM's rescaler computes in double).

use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use super::header::SliceHeader;
use crate::error::{Error, Result};

/// The transfer syntaxes this build decodes, for the refusal message.
const DECODERS: &str = "this build decodes uncompressed, deflated, RLE Lossless and JPEG \
    baseline/extended/lossless pixel data (pure-Rust decoders; JPEG 2000 and JPEG-LS need C \
    libraries): convert the series first, e.g. `gdcmconv --raw` or `dcmdjpeg`";

/// Refuses a file whose transfer syntax dicom-rs does not know or cannot decode pixel data of.
///
/// # Errors
///
/// [`Error::UnsupportedTransferSyntax`] naming the UID, its name and the decoders available.
pub(crate) fn check_transfer_syntax(object: &DefaultDicomObject, header: &SliceHeader) -> Result<()> {
    let uid = object.meta().transfer_syntax();
    let refuse = |name: &str, reason: &str| Error::UnsupportedTransferSyntax {
        path: header.path.clone(),
        uid: uid.to_string(),
        name: name.to_string(),
        reason: reason.to_string(),
    };
    match TransferSyntaxRegistry.get(uid) {
        None => Err(refuse(
            "unknown",
            &format!("not a transfer syntax dicom-rs knows; {DECODERS}"),
        )),
        Some(ts) if !ts.can_decode_all() => Err(refuse(ts.name(), &format!("no decoder in this build; {DECODERS}"))),
        Some(_) => Ok(()),
    }
}

/// The slice's values in HU, `Rows × Columns` in row-major order (columns fastest).
///
/// # Errors
///
/// When the pixel data cannot be decoded or is shorter than the header promises.
pub(crate) fn slice_values(object: &DefaultDicomObject, header: &SliceHeader) -> Result<Vec<f32>> {
    check_transfer_syntax(object, header)?;
    let decode_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Dicom {
        path: header.path.clone(),
        what: "cannot decode the pixel data".into(),
        source,
    };
    let decoded = object.decode_pixel_data().map_err(|e| decode_error(Box::new(e)))?;
    let bytes = decoded.frame_data(0).map_err(|e| decode_error(Box::new(e)))?;
    let count = usize::from(header.rows) * usize::from(header.columns);
    let width = usize::from(header.bits_allocated / 8);
    let Some(bytes) = bytes.get(..count * width) else {
        return Err(Error::InvalidTag {
            path: header.path.clone(),
            tag: "PixelData (7FE0,0010)".into(),
            value: format!("{} bytes", bytes.len()),
            expected: format!(
                "{} bytes ({} rows × {} columns × {} bytes)",
                count * width,
                header.rows,
                header.columns,
                width
            ),
        });
    };
    // dicom-pixeldata hands decoded samples over in native byte order.
    let raw: Vec<i64> = match width {
        1 => bytes.iter().map(|&b| i64::from(b)).collect(),
        2 => bytes
            .chunks_exact(2)
            .map(|c| i64::from(u16::from_ne_bytes([c[0], c[1]])))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| i64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    };
    let bits = u32::from(header.bits_stored);
    let mask = (1i64 << bits) - 1;
    let sign = 1i64 << (bits - 1);
    let (slope, intercept) = (header.slope, header.intercept);
    Ok(raw
        .into_iter()
        .map(|v| {
            let stored = v & mask;
            let stored = if header.signed && stored & sign != 0 {
                stored - (1i64 << bits)
            } else {
                stored
            };
            (stored as f64 * slope + intercept) as f32
        })
        .collect())
}
