//! Image decoding and preparation for OCR.

use std::io::Cursor;

use image::{imageops::FilterType, GrayImage, ImageFormat, ImageReader, RgbImage};

/// How images are chosen and prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepare {
    /// Images narrower or lower than this are skipped (spacer pixels, icons).
    pub min_side: u32,
    /// Images with more pixels than this are skipped (checked from the header, before
    /// decoding: a decompression bomb is never expanded).
    pub max_pixels: u64,
    /// Images with more pixels than this (and at most `max_pixels`) are scaled down to it:
    /// recognition time grows with the pixel count, the text of a page scan stays readable.
    pub pixel_cap: u64,
    /// Images lower than this are scaled up (by a whole factor) until they reach it: Tesseract
    /// reads text best at cap heights of 20 pixels or more.
    pub upscale_below: u32,
    /// Encoded images larger than this many bytes are skipped.
    pub max_bytes: usize,
}

impl Default for Prepare {
    fn default() -> Prepare {
        Prepare {
            min_side: 24,
            max_pixels: 40_000_000,
            pixel_cap: 20_000_000,
            upscale_below: 40,
            max_bytes: 10 << 20,
        }
    }
}

/// Why an image was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// Not an image format we decode (PNG, JPEG, GIF, BMP, TIFF, WebP).
    #[error("not a supported image")]
    NotAnImage,
    /// Smaller than `min_side`.
    #[error("too small ({0}x{1})")]
    TooSmall(u32, u32),
    /// More pixels than `max_pixels`, or more bytes than `max_bytes`.
    #[error("too large ({0}x{1})")]
    TooLarge(u32, u32),
    /// The image data is broken.
    #[error("undecodable: {0}")]
    Broken(String),
}

/// The formats decoded (the first frame of an animated GIF).
pub const FORMATS: [ImageFormat; 6] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Gif,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
    ImageFormat::WebP,
];

/// The format of encoded image bytes, from their magic numbers (never from a file name).
pub fn sniff(data: &[u8]) -> Option<ImageFormat> {
    image::guess_format(data)
        .ok()
        .filter(|f| FORMATS.contains(f))
}

/// Decodes an image (gray or RGB, transparency on white), scaled up when small and down when
/// beyond the pixel cap.
pub fn prepare(data: &[u8], p: &Prepare) -> Result<Prepared, Skip> {
    let format = sniff(data).ok_or(Skip::NotAnImage)?;
    let (w, h) = ImageReader::with_format(Cursor::new(data), format)
        .into_dimensions()
        .map_err(|e| Skip::Broken(e.to_string()))?;
    if data.len() > p.max_bytes || u64::from(w) * u64::from(h) > p.max_pixels {
        return Err(Skip::TooLarge(w, h));
    }
    if w < p.min_side || h < p.min_side {
        return Err(Skip::TooSmall(w, h));
    }
    let mut reader = ImageReader::with_format(Cursor::new(data), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(p.max_pixels * 8);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| Skip::Broken(e.to_string()))?;
    // Gray stays gray; colour stays colour: Tesseract thresholds each channel of a colour image
    // and keeps the one that separates text from background best, which reads coloured text on
    // coloured backgrounds better than one luminance channel would. Transparent pixels become
    // white paper, as a mail client shows them on a white page.
    let on_white =
        |c: u8, a: u8| ((u32::from(c) * u32::from(a) + 255 * (255 - u32::from(a))) / 255) as u8;
    let prepared = if !img.color().has_color() {
        if img.color().has_alpha() {
            let la = img.to_luma_alpha8();
            Prepared::Gray(GrayImage::from_fn(w, h, |x, y| {
                let [l, a] = la.get_pixel(x, y).0;
                image::Luma([on_white(l, a)])
            }))
        } else {
            Prepared::Gray(img.to_luma8())
        }
    } else if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        Prepared::Rgb(RgbImage::from_fn(w, h, |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0;
            image::Rgb([on_white(r, a), on_white(g, a), on_white(b, a)])
        }))
    } else {
        Prepared::Rgb(img.to_rgb8())
    };
    let pixels = u64::from(w) * u64::from(h);
    if pixels > p.pixel_cap {
        let scale = (p.pixel_cap as f64 / pixels as f64).sqrt();
        let (nw, nh) = (
            ((f64::from(w) * scale) as u32).max(1),
            ((f64::from(h) * scale) as u32).max(1),
        );
        return Ok(prepared.resize(nw, nh, FilterType::Triangle));
    }
    let factor = p.upscale_below.div_ceil(h.max(1));
    if h < p.upscale_below && u64::from(w * factor) * u64::from(h * factor) <= p.max_pixels {
        return Ok(prepared.resize(w * factor, h * factor, FilterType::CatmullRom));
    }
    Ok(prepared)
}

/// A decoded image ready for Tesseract.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// 8-bit gray.
    Gray(GrayImage),
    /// 8-bit RGB.
    Rgb(RgbImage),
}

impl Prepared {
    /// Width and height.
    pub fn dimensions(&self) -> (u32, u32) {
        match self {
            Prepared::Gray(i) => i.dimensions(),
            Prepared::Rgb(i) => i.dimensions(),
        }
    }

    /// The pixels, row by row, and the bytes per pixel.
    pub fn raw(&self) -> (&[u8], u32) {
        match self {
            Prepared::Gray(i) => (i.as_raw(), 1),
            Prepared::Rgb(i) => (i.as_raw(), 3),
        }
    }

    fn resize(&self, w: u32, h: u32, filter: FilterType) -> Prepared {
        match self {
            Prepared::Gray(i) => Prepared::Gray(image::imageops::resize(i, w, h, filter)),
            Prepared::Rgb(i) => Prepared::Rgb(image::imageops::resize(i, w, h, filter)),
        }
    }
}
