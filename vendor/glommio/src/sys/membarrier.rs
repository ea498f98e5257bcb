// Unless explicitly stated otherwise all files in this repository are licensed
// under the MIT/Apache-2.0 License, at your option.
//
// This product includes software developed at Datadog (https://www.datadoghq.com/). Copyright 2020 Datadog, Inc.
//
//! Memory barriers for the executor's sleep protocol.
//!
//! mxgate: upstream glommio issues a process-wide barrier here (`membarrier(2)`, or an
//! `mprotect` TLB shootdown), which interrupts every other CPU each time an executor goes to
//! sleep; on a gateway that is after nearly every network event. A sequentially consistent
//! fence on both sides of the protocol (here, and in `SleepNotifier::notify`) gives the same
//! ordering for a few cycles.

use std::sync::atomic;

/// Issues the barrier between publishing "about to sleep" and looking at the remote channels
/// once more.
#[inline]
pub(crate) fn heavy() {
    atomic::fence(atomic::Ordering::SeqCst);
}
