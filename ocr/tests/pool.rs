//! The OCR pool as a library: cache, skips, budgets and saturation, from a plain threaded test.

use std::io::Cursor;
use std::time::Duration;

use bytes::Bytes;
use image::{GrayImage, ImageFormat, Luma};
use mxgate_ocr::{Config, Pool};

/// A PNG of `w`×`h` with a few dark bars (shapes Tesseract looks at; no words).
fn png(w: u32, h: u32) -> Bytes {
    let img = GrayImage::from_fn(w, h, |x, y| {
        if (y / 8) % 3 == 0 && (x / 12) % 2 == 0 {
            Luma([20])
        } else {
            Luma([240])
        }
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    Bytes::from(out.into_inner())
}

#[test]
fn a_repeated_image_is_read_once_and_tiny_ones_are_skipped() {
    let pool = Pool::new(&Config::default()).expect("tesseract-ocr-eng installed");
    let img = png(320, 120);
    let r = pool
        .submit(vec![
            img.clone(),
            img,
            png(10, 10),
            Bytes::from_static(b"not an image"),
        ])
        .unwrap()
        .wait()
        .unwrap()
        .unwrap();
    assert_eq!(r.images, 2, "{r:?}");
    assert_eq!(r.cached, 1, "the second copy comes from the cache");
    assert_eq!(r.skipped.len(), 2, "{:?}", r.skipped);
    assert!(r.skipped.iter().any(|s| s.contains("too small")));
    assert!(r
        .skipped
        .iter()
        .any(|s| s.contains("not a supported image")));
}

#[test]
fn the_message_budget_stops_reading() {
    let cfg = Config {
        message_budget: Duration::ZERO,
        ..Config::default()
    };
    let pool = Pool::new(&cfg).unwrap();
    let r = pool
        .submit(vec![png(320, 120)])
        .unwrap()
        .wait()
        .unwrap()
        .unwrap();
    assert!(r.out_of_time);
    assert_eq!(r.images, 0);
}

#[test]
fn a_full_queue_is_refused_at_once() {
    let cfg = Config {
        workers: 1,
        queue: 0,
        ..Config::default()
    };
    let pool = Pool::new(&cfg).unwrap();
    let big: Vec<Bytes> = (0..8).map(|i| png(1200 + i, 900)).collect();
    // With no queue a job is taken only by a worker waiting for one: the worker may still be
    // loading its Tesseract engine.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let first = loop {
        match pool.submit(big.clone()) {
            Ok(t) => break Ok(t),
            Err(e) if std::time::Instant::now() > deadline => break Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    // The single worker is busy with eight images: nothing waits behind it.
    let mut refused = false;
    for _ in 0..50 {
        match pool.submit(vec![png(300, 100)]) {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(t) => drop(t.wait()),
        }
    }
    assert!(first.is_ok());
    assert!(refused, "a busy pool with no queue refuses");
}
