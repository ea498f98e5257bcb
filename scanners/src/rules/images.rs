//! SpamAssassin's ImageInfo plugin: the GIF, PNG and JPEG parts of a message, counted by type,
//! with their dimensions read from the image headers, for `image_count`, `pixel_coverage`,
//! `image_to_text_ratio`, `image_size_exact`, `image_size_range`, `image_named` and
//! `image_name_regex`.

use mxgate_core::mime::decode::utf8_lossy;
use std::collections::{HashMap, HashSet};

use mxgate_core::mime::{Message, PartKind};

/// The image types the plugin reads; `all` sums them.
const TYPES: [&str; 3] = ["gif", "png", "jpeg"];

/// What the plugin found, per type (`all`, `gif`, `png`, `jpeg`).
#[derive(Debug, Default, Clone)]
pub struct ImageInfo {
    count: HashMap<&'static str, u64>,
    pixels: HashMap<&'static str, u64>,
    /// Dimensions seen, as (height, width).
    dims: HashMap<&'static str, HashSet<(u64, u64)>>,
    names: HashSet<String>,
}

impl ImageInfo {
    /// Reads the base64-encoded `image/gif|png|jpeg` leaves of a message.
    pub fn of(msg: &Message) -> ImageInfo {
        let mut info = ImageInfo::default();
        for p in msg.parts.iter().filter(|p| p.kind == PartKind::Leaf) {
            let ty = match p.content_type.as_str() {
                "image/gif" => "gif",
                "image/png" => "png",
                "image/jpeg" | "image/jpg" => "jpeg",
                _ => continue,
            };
            let cte = msg
                .field(p.id, "content-transfer-encoding")
                .map(|v| utf8_lossy(v).trim().to_ascii_lowercase());
            if cte.as_deref() != Some("base64") {
                continue;
            }
            *info.count.entry(ty).or_default() += 1;
            let data = msg.decoded(p.id).map(|b| &b[..]).unwrap_or_default();
            let dims = match ty {
                "gif" => gif(data),
                "png" => png(data),
                _ => jpeg(data),
            };
            if let Some((w, h)) = dims.filter(|&(w, h)| w > 0 && h > 0) {
                *info.pixels.entry(ty).or_default() += w * h;
                info.dims.entry(ty).or_default().insert((h, w));
                if let Some(n) = p.filename.as_ref().filter(|n| !n.is_empty()) {
                    info.names.insert(n.clone());
                }
            }
        }
        for ty in TYPES {
            let (c, px) = (info.count(ty), info.pixels(ty));
            *info.count.entry("all").or_default() += c;
            *info.pixels.entry("all").or_default() += px;
            let d: Vec<(u64, u64)> = info.dims.get(ty).into_iter().flatten().copied().collect();
            info.dims.entry("all").or_default().extend(d);
        }
        info
    }

    /// Images of a type.
    pub fn count(&self, ty: &str) -> u64 {
        self.count.get(ty).copied().unwrap_or(0)
    }

    /// Pixels (width × height, summed) of a type.
    pub fn pixels(&self, ty: &str) -> u64 {
        self.pixels.get(ty).copied().unwrap_or(0)
    }

    /// Whether an image of the type is `height` × `width`.
    pub fn has_size(&self, ty: &str, height: u64, width: u64) -> bool {
        self.dims
            .get(ty)
            .is_some_and(|d| d.contains(&(height, width)))
    }

    /// Whether an image of the type falls in the ranges (upper bounds optional).
    pub fn in_size_range(
        &self,
        ty: &str,
        min: (u64, u64),
        max_h: Option<u64>,
        max_w: Option<u64>,
    ) -> bool {
        self.dims.get(ty).is_some_and(|d| {
            d.iter().any(|&(h, w)| {
                h >= min.0
                    && w >= min.1
                    && max_h.is_none_or(|m| h <= m)
                    && max_w.is_none_or(|m| w <= m)
            })
        })
    }

    /// The names of the images whose size was read.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }
}

/// `result_check`: `min <= value <= max` (`max` excluded when `exclusive_max`).
pub fn in_range(value: f64, min: f64, max: Option<f64>, exclusive_max: bool) -> bool {
    value >= min && max.is_none_or(|m| value < m || (!exclusive_max && value == m))
}

fn be16(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn be32(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_be_bytes(
        b.get(at..at + 4)?.try_into().ok()?,
    )))
}

/// (width, height) from a GIF's logical screen descriptor.
fn gif(d: &[u8]) -> Option<(u64, u64)> {
    if !(d.starts_with(b"GIF87a") || d.starts_with(b"GIF89a")) {
        return None;
    }
    let le = |at: usize| {
        Some(u64::from(u16::from_le_bytes(
            d.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    Some((le(6)?, le(8)?))
}

/// (width, height) from a PNG's IHDR chunk, walked as the plugin walks it (eight bytes at a
/// time: the IHDR chunk comes first in any PNG).
fn png(d: &[u8]) -> Option<(u64, u64)> {
    if !d.starts_with(b"\x89PNG\r\n\x1a\n") {
        return None;
    }
    let mut pos = 8;
    while pos < d.len() {
        let len = be32(d, pos).unwrap_or(0);
        let ty = d.get(pos + 4..pos + 8).unwrap_or_default();
        pos += 8;
        if ty == b"IEND" {
            break;
        }
        if ty == b"IHDR" && len == 13 {
            return Some((be32(d, pos)?, be32(d, pos + 4)?));
        }
    }
    None
}

/// (width, height) from a JPEG's start-of-frame segment.
fn jpeg(d: &[u8]) -> Option<(u64, u64)> {
    if !d.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut pos = 2;
    loop {
        let (xx, mark, len) = (*d.get(pos)?, *d.get(pos + 1)?, be16(d, pos + 2)?);
        if xx != 0xFF || mark == 0xDA || mark == 0xD9 || len < 2 {
            return None;
        }
        pos += 4;
        let block = d.get(pos..(pos + len as usize - 2).min(d.len()))?;
        let sof = matches!(mark, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF);
        if sof {
            return Some((be16(block, 3)?, be16(block, 1)?));
        }
        pos += block.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                out.push(if i <= c.len() {
                    T[(n >> (18 - 6 * i) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        out
    }

    #[test]
    fn reads_sizes_from_image_headers() {
        let gif = b"GIF89a\x40\x01\xc8\x00\x80\x00\x00";
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&[0, 0, 2, 0, 0, 0, 1, 0, 8, 2, 0, 0, 0]);
        png.extend_from_slice(&[0, 0, 0, 0]);
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x4A, 0x46, 0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00,
            0x64, 0x00, 0xC8, 0x01, 0x01, 0x11, 0x00,
        ];
        let part = |ty: &str, name: &str, data: &[u8]| {
            format!(
                "--b\r\nContent-Type: {ty}; name=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
                b64(data)
            )
        };
        let text = format!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n{}{}{}--b--\r\n",
            part("image/gif", "a.gif", gif),
            part("image/png", "b.png", &png),
            part("image/jpeg", "c.jpg", &jpeg)
        );
        let msg = Message::parse(bytes::Bytes::from(text));
        let i = ImageInfo::of(&msg);
        assert_eq!(
            (
                i.count("gif"),
                i.count("png"),
                i.count("jpeg"),
                i.count("all")
            ),
            (1, 1, 1, 3)
        );
        assert_eq!(i.pixels("gif"), 320 * 200);
        assert_eq!(i.pixels("png"), 512 * 256);
        assert_eq!(i.pixels("jpeg"), 200 * 100);
        assert!(i.has_size("gif", 200, 320) && i.has_size("all", 100, 200));
        assert!(i.in_size_range("png", (200, 500), None, Some(600)));
        assert!(!i.in_size_range("png", (300, 0), None, None));
        let mut names: Vec<&str> = i.names().collect();
        names.sort();
        assert_eq!(names, ["a.gif", "b.png", "c.jpg"]);
        assert!(in_range(2.0, 1.0, Some(2.0), false) && !in_range(2.0, 1.0, Some(2.0), true));
    }
}
