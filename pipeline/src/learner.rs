//! Autolearning: the gateway's own confident verdicts fed back into the Bayes model.
//!
//! Shards never wait for learning and never write the model. A shard that decides a message is
//! worth learning hands its token ids to the learner thread over a bounded channel (`try_send`:
//! when the channel is full the message is simply not learned). The learner owns a private copy
//! of the model, caps how many messages it learns a minute, and every `flush` interval writes
//! the model file (atomically, as `mxgate bayes learn` does) and publishes a fresh read-only copy
//! (the token counts, without the learned messages' records) that the shards classify with from
//! their next message on.

use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mxgate_scanners::bayes::{Class, Model, RedbStore, Store};

struct Item {
    hash: u64,
    ids: Vec<u64>,
    class: Class,
}

/// The published model: the first node's, and a copy for each further NUMA node.
type Published = (Arc<Model>, Vec<(usize, Arc<Model>)>);

/// The handle shards hold: the model to classify with, and the way to the learner.
#[derive(Clone)]
pub struct Learner {
    tx: SyncSender<Item>,
    current: Arc<RwLock<Published>>,
}

impl Learner {
    /// Starts the learner thread over `model`, saving to `store`; each published model is also
    /// copied onto the NUMA nodes of `nodes` ((node, a CPU of it)).
    pub fn start(
        model: Model,
        store: RedbStore,
        per_minute: u32,
        flush: Duration,
        nodes: Vec<(usize, usize)>,
    ) -> Learner {
        let first = Arc::new(model.for_classifying());
        let copies = crate::stages::bayes_node_copies(&first, &nodes);
        let current = Arc::new(RwLock::new((first, copies)));
        let (tx, rx) = sync_channel::<Item>(1024);
        let published = Arc::clone(&current);
        let spawned = std::thread::Builder::new()
            .name("mxgate-learner".into())
            .spawn(move || {
                let mut model = model;
                let mut dirty = 0usize;
                let mut window = Instant::now();
                let mut in_window = 0u32;
                let mut next_flush = Instant::now() + flush;
                loop {
                    let wait = next_flush.saturating_duration_since(Instant::now());
                    let done = match rx.recv_timeout(wait) {
                        Ok(item) => {
                            if window.elapsed() >= Duration::from_secs(60) {
                                window = Instant::now();
                                in_window = 0;
                            }
                            if in_window < per_minute {
                                in_window += 1;
                                model.learn(item.hash, &item.ids, item.class);
                                dirty += 1;
                            }
                            false
                        }
                        Err(RecvTimeoutError::Timeout) => false,
                        Err(RecvTimeoutError::Disconnected) => true,
                    };
                    if dirty > 0 && (done || Instant::now() >= next_flush) {
                        match store.save(&mut model) {
                            Ok(()) => {
                                tracing::info!(
                                    learned = dirty,
                                    spam = model.nspam,
                                    ham = model.nham,
                                    "bayes: autolearned messages saved"
                                );
                                let first = Arc::new(model.for_classifying());
                                let copies = crate::stages::bayes_node_copies(&first, &nodes);
                                if let Ok(mut w) = published.write() {
                                    *w = (first, copies);
                                }
                                dirty = 0;
                            }
                            Err(e) => tracing::error!("bayes: cannot save: {e}"),
                        }
                    }
                    if Instant::now() >= next_flush {
                        next_flush = Instant::now() + flush;
                    }
                    if done {
                        break;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("bayes: no learner thread ({e}); autolearning is off");
        }
        Learner { tx, current }
    }

    /// The model to classify with now, for a shard on `node` (its node's copy when there is
    /// one).
    pub fn model(&self, node: Option<usize>) -> Arc<Model> {
        let pick = |(first, copies): &Published| {
            node.and_then(|n| copies.iter().find(|(m, _)| *m == n))
                .map_or_else(|| Arc::clone(first), |(_, c)| Arc::clone(c))
        };
        match self.current.read() {
            Ok(p) => pick(&p),
            Err(p) => pick(&p.into_inner()),
        }
    }

    /// Offers a message for learning; false when the learner is busy (the message is skipped).
    pub fn offer(&self, hash: u64, ids: Vec<u64>, class: Class) -> bool {
        match self.tx.try_send(Item { hash, ids, class }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}
