//! Image decoding beyond the basics: WebP, and EXIF orientation applied so faces are upright.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use rollcall_models::image_io::{decode_rgb, DEFAULT_MAX_PIXELS};

fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

/// A 40×20 image: left half red, right half blue.
fn halves() -> RgbImage {
    RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

/// Inserts an EXIF APP1 segment holding only the orientation tag right after the JPEG's SOI.
fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend(8u32.to_le_bytes()); // first IFD at offset 8
    tiff.extend(1u16.to_le_bytes()); // one entry
    tiff.extend(0x0112u16.to_le_bytes()); // Orientation
    tiff.extend(3u16.to_le_bytes()); // SHORT
    tiff.extend(1u32.to_le_bytes()); // count
    tiff.extend(orientation.to_le_bytes());
    tiff.extend([0, 0]); // value padding
    tiff.extend(0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

fn is_red(p: &Rgb<u8>) -> bool {
    p[0] > 200 && p[2] < 60
}

#[test]
fn exif_orientation_is_applied() {
    let jpeg = encode(&halves(), ImageFormat::Jpeg);
    let upright = decode_rgb(&jpeg, DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(upright.dimensions(), (40, 20));
    // Orientation 6: the camera was turned; the image must be rotated 90° clockwise to view.
    let rotated = decode_rgb(&with_orientation(&jpeg, 6), DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(rotated.dimensions(), (20, 40));
    assert!(
        is_red(rotated.get_pixel(10, 5)),
        "the left (red) half must end up on top"
    );
    assert!(!is_red(rotated.get_pixel(10, 35)));
    // Orientation 3: upside down, so red moves to the right.
    let flipped = decode_rgb(&with_orientation(&jpeg, 3), DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(flipped.dimensions(), (40, 20));
    assert!(is_red(flipped.get_pixel(35, 10)) && !is_red(flipped.get_pixel(5, 10)));
}

#[test]
fn webp_decodes_losslessly() {
    let img = RgbImage::from_fn(33, 17, |x, y| Rgb([(x * 7) as u8, (y * 13) as u8, 99]));
    let webp = encode(&img, ImageFormat::WebP);
    assert_eq!(&webp[8..12], b"WEBP");
    assert_eq!(decode_rgb(&webp, DEFAULT_MAX_PIXELS).unwrap(), img);
}
