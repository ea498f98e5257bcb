//! The OCR pool against forking the `tesseract` command per image, as SpamAssassin's and
//! Proxmox's OCR plugins do: the same images, the same number of concurrent reads, the pool's
//! result cache off (every image is read).
//!
//! Images: every image part of the corpus's image-spam messages that Tesseract reads, and test
//! images rendered here with ImageMagick. Each side reads them all, pass after pass, for
//! `MXGATE_BENCH_SECONDS` (default 20) with `MXGATE_BENCH_THREADS` (default 2) workers.
//!
//! `MXGATE_CORPUS=../shared/corpus cargo bench -p mxgate-ocr --bench ocr`

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mxgate_core::mime::{Message, PartKind};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn corpus_images(dir: &Path) -> Vec<Bytes> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let msg = Message::parse(Bytes::from(std::fs::read(n).unwrap()));
        for p in msg.parts.iter().filter(|p| p.kind == PartKind::Leaf) {
            if let Some(d) = msg.decoded(p.id) {
                // Only images both sides can read (a broken GIF fails in both).
                if mxgate_ocr::prepare::prepare(d, &mxgate_ocr::Prepare::default()).is_ok() {
                    out.push(d.clone());
                }
            }
        }
    }
    out
}

fn rendered(dir: &Path) -> Vec<Bytes> {
    let lines = [
        "Cheap replica watches for sale",
        "Your account has been suspended",
        "Limited offer: 80% discount on all orders",
        "Stock alert: strong buy recommendation",
    ];
    let mut out = Vec::new();
    for (i, (size, ext)) in [(28, "png"), (36, "jpg"), (24, "gif"), (32, "png")]
        .iter()
        .enumerate()
    {
        let p = dir.join(format!("bench-{i}.{ext}"));
        let mut args: Vec<String> = vec![
            "-background".into(),
            "white".into(),
            "-fill".into(),
            "black".into(),
            "-font".into(),
            "DejaVu-Sans".into(),
            "-pointsize".into(),
            size.to_string(),
        ];
        for l in &lines {
            args.push(format!("label:{l}"));
        }
        args.extend(["-append", "-bordercolor", "white", "-border", "30"].map(String::from));
        args.push(p.display().to_string());
        let ok = std::process::Command::new("convert")
            .args(&args)
            .status()
            .expect("ImageMagick's convert")
            .success();
        assert!(ok, "convert failed");
        out.push(Bytes::from(std::fs::read(&p).unwrap()));
    }
    out
}

fn run(
    images: &Arc<Vec<Bytes>>,
    threads: usize,
    secs: f64,
    read: Arc<dyn Fn(usize) -> usize + Send + Sync>,
) -> (usize, f64, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let chars = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (images, next, chars, read) =
                (images.clone(), next.clone(), chars.clone(), read.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i % images.len() == 0 && i > 0 && Instant::now() > deadline {
                        break;
                    }
                    let c = read(i % images.len());
                    if i < images.len() {
                        chars.fetch_add(c, Ordering::Relaxed);
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let n: usize = hs.into_iter().map(|h| h.join().unwrap()).sum();
    (
        n,
        started.elapsed().as_secs_f64(),
        chars.load(Ordering::Relaxed),
    )
}

fn main() {
    mxgate_ocr::ensure_single_thread_omp();
    let secs: f64 = std::env::var("MXGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    let threads: usize = std::env::var("MXGATE_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let root = mxgate_core::corpus_root();
    let tmp = std::env::temp_dir().join(format!("mxgate-bench-ocr-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut images = corpus_images(&root.join("image-spam"));
    images.extend(rendered(&tmp));
    // The fork side reads files: write each image once.
    let paths: Vec<PathBuf> = images
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let p = tmp.join(format!("img-{i}"));
            std::fs::write(&p, d).unwrap();
            p
        })
        .collect();
    let images = Arc::new(images);
    let total: usize = images.iter().map(|d| d.len()).sum();
    println!(
        "{} images ({:.1} MB); {threads} concurrent reads, {secs} s per side; OMP_THREAD_LIMIT={}",
        images.len(),
        total as f64 / 1e6,
        std::env::var("OMP_THREAD_LIMIT").unwrap_or_default()
    );
    let cfg = mxgate_ocr::Config {
        workers: threads,
        queue: 64,
        cache_entries: 0,
        max_images: 1,
        image_budget: Duration::from_secs(60),
        message_budget: Duration::from_secs(60),
        ..mxgate_ocr::Config::default()
    };
    let pool = Arc::new(mxgate_ocr::Pool::new(&cfg).expect("tesseract-ocr-eng"));
    let (p, imgs) = (pool.clone(), images.clone());
    let ours = run(
        &images,
        threads,
        secs,
        Arc::new(move |i| {
            let r = p
                .submit(vec![imgs[i].clone()])
                .unwrap()
                .wait()
                .unwrap()
                .unwrap();
            r.chars
        }),
    );
    let paths = Arc::new(paths);
    // The command as the plugins run it (OpenMP threads as many as cores), and at its best
    // (one thread per process, as the pool's engines run).
    let fork = |omp_one: bool| {
        let paths = paths.clone();
        Arc::new(move |i: usize| {
            let mut cmd = std::process::Command::new("tesseract");
            cmd.arg(&paths[i])
                .arg("-")
                .stderr(std::process::Stdio::null());
            if !omp_one {
                cmd.env_remove("OMP_THREAD_LIMIT");
            }
            let out = cmd.output().expect("tesseract");
            String::from_utf8_lossy(&out.stdout)
                .chars()
                .filter(|c| !c.is_whitespace())
                .count()
        }) as Arc<dyn Fn(usize) -> usize + Send + Sync>
    };
    let theirs = run(&images, threads, secs, fork(false));
    let theirs_one = run(&images, threads, secs, fork(true));
    let report = |name: &str, (n, s, chars): (usize, f64, usize)| {
        println!(
            "{name:<28} {:>7.2} images/s   ({n} reads in {s:.1} s; {chars} characters in a pass)",
            n as f64 / s
        );
        n as f64 / s
    };
    let a = report("mxgate OCR pool", ours);
    let b = report("tesseract per image", theirs);
    let c = report("tesseract per image, OMP=1", theirs_one);
    println!(
        "pool / fork-per-image: {:.2}x (as plugins run it), {:.2}x (with OMP_THREAD_LIMIT=1)",
        a / b,
        a / c
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
