//! The shared corpus, read for the benchmarks of this crate.

use bytes::Bytes;

/// Every message of one corpus folder (`ham`, `hard_ham`, `spam`), in name order. The corpus is
/// [`mxgate_core::corpus_root`].
pub fn folder(name: &str) -> Vec<Bytes> {
    let dir = mxgate_core::corpus_root().join(name);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| Bytes::from(std::fs::read(n).unwrap()))
        .collect()
}

/// ham, hard_ham and spam with their class, for Bayes (the benchmark and the `bayes_passes`
/// example).
#[allow(dead_code)] // not every benchmark that includes this module reads it
pub fn bayes_corpus() -> Vec<(Bytes, mxgate_scanners::bayes::Class)> {
    use mxgate_scanners::bayes::Class;
    [
        ("ham", Class::Ham),
        ("hard_ham", Class::Ham),
        ("spam", Class::Spam),
    ]
    .into_iter()
    .flat_map(|(f, class)| folder(f).into_iter().map(move |m| (m, class)))
    .collect()
}
