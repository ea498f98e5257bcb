//! Image sniffing, decoding and preparation of arbitrary bytes (hostile attachments), and the
//! choice of images in a message: errors and skips, never a panic or an unbounded allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mxgate_core::mime::Message;
use mxgate_ocr::{images_to_read, prepare, Prepare, When};

fuzz_target!(|data: &[u8]| {
    let p = Prepare { max_pixels: 4_000_000, pixel_cap: 2_000_000, ..Prepare::default() };
    if let Ok(img) = prepare::prepare(data, &p) {
        let (w, h) = img.dimensions();
        assert!(u64::from(w) * u64::from(h) <= p.max_pixels);
        let (raw, bpp) = img.raw();
        assert_eq!(raw.len() as u64, u64::from(w) * u64::from(h) * u64::from(bpp));
    }
    let msg = Message::parse(bytes::Bytes::copy_from_slice(data));
    let _ = images_to_read(&msg, &When { max_text_chars: 100 });
});
