//! Reads the text of image files with the OCR pool, from a plain threaded program.
//!
//! `cargo run -p mxgate-ocr --example read_images -- image.png [more images]`

fn main() {
    mxgate_ocr::ensure_single_thread_omp();
    let cfg = mxgate_ocr::Config {
        workers: 2,
        ..Default::default()
    };
    let pool = match mxgate_ocr::Pool::new(&cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    // Submit every file first (they are read in parallel), then wait for each in order.
    let mut tickets = Vec::new();
    for path in std::env::args().skip(1) {
        match std::fs::read(&path) {
            Ok(data) => tickets.push((path, pool.submit(vec![data.into()]))),
            Err(e) => eprintln!("{path}: {e}"),
        }
    }
    for (path, ticket) in tickets {
        match ticket.map(|t| t.wait()) {
            Ok(Ok(Ok(r))) => println!("== {path} ({} chars)\n{}", r.chars, r.text),
            Ok(Ok(Err(e))) => eprintln!("{path}: {e}"),
            Ok(Err(e)) => eprintln!("{path}: {e}"),
            Err(e) => eprintln!("{path}: {e}"),
        }
    }
}
