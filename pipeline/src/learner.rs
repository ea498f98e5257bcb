//! Autolearning: the gateway's own confident verdicts fed back into the Bayes model.
//!
//! Shards never wait for learning and never write the model. A shard that decides a message is
//! worth learning hands its token ids to the learner thread over a bounded channel (`try_send`:
//! when the channel is full the message is simply not learned). The learner owns a private copy
//! of the model, caps how many messages it learns a minute, and every `flush` interval writes
//! the model file (atomically, as `mxgate bayes learn` does) and publishes a fresh read-only copy
//! (the token counts, without the learned messages' records) that the shards classify with from
//! their next message on. Soon after start and then once a day it keeps the model under its
//! size limit, dropping the least recently learned tokens (SpamAssassin's `bayes_auto_expire`),
//! so a gateway that learns for years keeps a model of what it learned lately.

use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mxgate_scanners::bayes::{Class, Model, RedbStore, Store};

struct Item {
    hash: u64,
    ids: Vec<u64>,
    class: Class,
}

/// Token ageing while autolearning.
#[derive(Debug, Clone, Copy)]
pub struct Ageing {
    /// A model of more tokens loses its least recently learned ones down to about three
    /// quarters of this (0: never).
    pub max_tokens: usize,
    /// Records of messages learned this many days ago go (0: never).
    pub seen_days: u32,
    /// The first ageing after start waits this long; the next ones a day each.
    pub first_after: Duration,
}

const DAY: Duration = Duration::from_secs(86_400);

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
        ageing: Ageing,
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
                let mut next_ageing = Instant::now() + ageing.first_after;
                loop {
                    if Instant::now() >= next_ageing {
                        next_ageing = Instant::now() + DAY;
                        let tokens = match ageing.max_tokens {
                            0 => 0,
                            n if model.tokens.len() > n => model.expire_to(n / 4 * 3),
                            _ => 0,
                        };
                        let messages = model.expire_seen(ageing.seen_days);
                        if tokens + messages > 0 {
                            tracing::info!(tokens, messages, "bayes: aged out");
                            dirty += 1;
                        }
                    }
                    let wait = next_flush
                        .min(next_ageing)
                        .saturating_duration_since(Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_aged_soon_after_start_saved_and_published() {
        let dir = std::env::temp_dir().join(format!("mxgate-learner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = RedbStore::new(dir.join("bayes.redb"));
        let mut m = Model::default();
        m.learn(1, &[10, 11, 13, 14], Class::Spam);
        m.learn(2, &[11, 12], Class::Ham);
        m.tokens.get_mut(&10).unwrap().atime -= 91; // the least recently learned
        m.tokens.get_mut(&12).unwrap().atime -= 30;
        m.tokens.get_mut(&13).unwrap().atime -= 2;
        store.save(&mut m).unwrap();
        // Five tokens over a limit of four: aged down to three.
        let ageing = Ageing {
            max_tokens: 4,
            seen_days: 365,
            first_after: Duration::from_millis(20),
        };
        let learner = Learner::start(
            m,
            store.clone(),
            120,
            Duration::from_millis(50),
            ageing,
            vec![],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let saved = store.load().unwrap();
            if !saved.tokens.contains_key(&10) {
                let mut ids: Vec<u64> = saved.tokens.keys().copied().collect();
                ids.sort_unstable();
                assert_eq!(ids, vec![11, 13, 14]);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the old tokens were not aged out"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The shards classify with the aged model once it is saved.
        let published = learner.model(None);
        assert!(published.tokens.contains_key(&11) && !published.tokens.contains_key(&10));
        assert_eq!(
            published.messages(),
            0,
            "the copy for classifying has no message records"
        );
        drop(learner);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
