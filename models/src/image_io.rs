//! Safe image decoding: format by magic bytes (JPEG, PNG, WebP only), a pixel limit checked
//! from the header before any pixel buffer is allocated, decoder memory limits, and EXIF
//! orientation applied so faces are upright.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{ModelError, Result};

/// Default pixel limit: 40 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// The accepted formats, identified by their magic bytes.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else {
        None
    }
}

/// Decodes `bytes` into an upright RGB image, refusing more than `max_pixels` pixels.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let format = sniff_format(bytes).ok_or(ModelError::UnsupportedFormat)?;
    if format == ImageFormat::Jpeg && !has_jpeg_end(bytes) {
        // JPEG decoders pad a truncated scan with grey instead of failing; refuse it here.
        return Err(ModelError::Decode(
            "truncated JPEG: no end-of-image marker".into(),
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // Four bytes per pixel of RGBA plus headroom for the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| ModelError::Decode(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ModelError::TooManyPixels {
            width,
            height,
            max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(ModelError::Decode("image has no pixels".into()));
    }
    let orientation = decoder.orientation().ok();
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| ModelError::Decode(e.to_string()))?;
    if let Some(orientation) = orientation {
        img.apply_orientation(orientation);
    }
    Ok(img.into_rgb8())
}

/// Whether a JPEG ends with its end-of-image marker (`FF D9`), ignoring trailing zero padding.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut out, format)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_png_and_jpeg() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 128]));
        let png = decode_rgb(&encode(&img, ImageFormat::Png), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(png, img);
        let jpeg = decode_rgb(&encode(&img, ImageFormat::Jpeg), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(jpeg.dimensions(), (7, 5));
    }

    #[test]
    fn rejects_other_formats_by_magic_bytes() {
        let img = RgbImage::new(4, 4);
        let bmp = encode(&img, ImageFormat::Bmp);
        assert!(matches!(
            decode_rgb(&bmp, DEFAULT_MAX_PIXELS),
            Err(ModelError::UnsupportedFormat)
        ));
        assert!(matches!(
            decode_rgb(b"GIF89a....", DEFAULT_MAX_PIXELS),
            Err(ModelError::UnsupportedFormat)
        ));
    }

    #[test]
    fn rejects_truncated_files() {
        let img = RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let png = encode(&img, ImageFormat::Png);
        assert!(matches!(
            decode_rgb(&png[..png.len() / 2], DEFAULT_MAX_PIXELS),
            Err(ModelError::Decode(_))
        ));
    }

    #[test]
    fn rejects_decompression_bombs_from_the_header() {
        // A valid PNG claiming 30000x30000 pixels, with a few bytes of (empty) pixel data:
        // signature, IHDR (8-bit RGB), an IDAT of an empty zlib stream, IEND.
        let png = include_bytes!("../tests/fixtures/png-bomb-30000x30000.png");
        assert!(png.len() < 100);
        let err = decode_rgb(png, DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::TooManyPixels {
                    width: 30000,
                    height: 30000,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
