//! What the element keeps of the stream it passes on, as GstBaseTransform
//! kept it when the element was one: the TIME segment, the end of the last
//! buffer (POSITION queries are answered with it) and, with the `qos`
//! property on, the earliest running time downstream still wants (a buffer
//! due before it is dropped).
//!
//! Per buffer only atomics are touched; the segment's lock is taken on
//! SEGMENT and FLUSH_STOP events, for queries, and per buffer only with `qos`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// `u64::MAX`: no time.
const NONE: u64 = u64::MAX;

#[derive(Debug)]
pub(super) struct StreamPosition {
    segment: Mutex<Option<gst::FormattedSegment<gst::ClockTime>>>,
    /// End of the last buffer with a timestamp, in ns.
    position: AtomicU64,
    /// From downstream's last QOS event: buffers due at or before this
    /// running time are late, in ns.
    earliest: AtomicU64,
    qos: AtomicBool,
}

impl Default for StreamPosition {
    fn default() -> Self {
        StreamPosition {
            segment: Mutex::new(None),
            position: AtomicU64::new(NONE),
            earliest: AtomicU64::new(NONE),
            qos: AtomicBool::new(false),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn nanos(time: Option<gst::ClockTime>) -> u64 {
    time.map_or(NONE, gst::ClockTime::nseconds)
}

fn time(nanos: u64) -> Option<gst::ClockTime> {
    (nanos != NONE).then(|| gst::ClockTime::from_nseconds(nanos))
}

impl StreamPosition {
    /// A new stream (start, FLUSH_STOP): no segment, position or QoS yet.
    pub fn reset(&self) {
        *lock(&self.segment) = None;
        self.position.store(NONE, Ordering::Relaxed);
        self.earliest.store(NONE, Ordering::Relaxed);
    }

    /// A SEGMENT event. Only TIME segments give positions and running times.
    pub fn set_segment(&self, segment: &gst::Segment) {
        *lock(&self.segment) = segment.downcast_ref::<gst::ClockTime>().cloned();
    }

    pub fn set_qos(&self, on: bool) {
        self.qos.store(on, Ordering::Relaxed);
    }

    #[inline]
    pub fn qos(&self) -> bool {
        self.qos.load(Ordering::Relaxed)
    }

    /// A QOS event from downstream: what it wants from now on starts at
    /// `timestamp + diff` (the running time it would have needed).
    pub fn note_qos(&self, diff: i64, timestamp: Option<gst::ClockTime>) {
        let earliest = timestamp.map_or(NONE, |t| t.nseconds().saturating_add_signed(diff));
        self.earliest.store(earliest, Ordering::Relaxed);
    }

    /// With `qos` on: the buffer at `pts` is due before what downstream
    /// still wants, and is to be dropped.
    #[inline]
    pub fn is_late(&self, pts: Option<gst::ClockTime>) -> bool {
        self.qos() && self.is_late_with_qos(pts)
    }

    #[cold]
    #[inline(never)]
    fn is_late_with_qos(&self, pts: Option<gst::ClockTime>) -> bool {
        let earliest = self.earliest.load(Ordering::Relaxed);
        let (Some(pts), Some(earliest)) = (pts, time(earliest)) else {
            return false;
        };
        lock(&self.segment)
            .as_ref()
            .and_then(|segment| segment.to_running_time(pts))
            .is_some_and(|running| running <= earliest)
    }

    /// A buffer went through: its end is the position.
    #[inline]
    pub fn note_buffer(&self, pts: Option<gst::ClockTime>, duration: Option<gst::ClockTime>) {
        let Some(pts) = pts else { return };
        let end = match duration {
            Some(duration) => pts.saturating_add(duration),
            None => pts,
        };
        self.position.store(nanos(Some(end)), Ordering::Relaxed);
    }

    /// The position in stream time, for a TIME POSITION query; `None` when
    /// unknown (the query then goes on to the peer).
    pub fn position(&self) -> Option<gst::ClockTime> {
        let position = time(self.position.load(Ordering::Relaxed))?;
        lock(&self.segment)
            .as_ref()
            .and_then(|segment| segment.to_stream_time(position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Option<gst::ClockTime> {
        Some(gst::ClockTime::from_seconds(s))
    }

    #[test]
    fn position_is_the_end_of_the_last_buffer_in_stream_time() {
        gst::init().unwrap();
        let stream = StreamPosition::default();
        stream.note_buffer(secs(1), secs(1));
        assert_eq!(stream.position(), None, "no segment yet");
        let mut segment = gst::FormattedSegment::<gst::ClockTime>::new();
        segment.set_start(gst::ClockTime::from_seconds(1));
        segment.set_time(gst::ClockTime::from_seconds(10));
        stream.set_segment(segment.upcast_ref());
        // Stream time = time + (position - start).
        assert_eq!(stream.position(), secs(11));
        stream.note_buffer(secs(3), None);
        assert_eq!(stream.position(), secs(12));
        stream.reset();
        assert_eq!(stream.position(), None);
    }

    #[test]
    fn with_qos_on_buffers_due_before_the_earliest_time_are_late() {
        gst::init().unwrap();
        let stream = StreamPosition::default();
        stream.set_segment(gst::FormattedSegment::<gst::ClockTime>::new().upcast_ref());
        stream.note_qos(2_000_000_000, secs(8));
        assert!(!stream.is_late(secs(1)), "qos off");
        stream.set_qos(true);
        assert!(stream.is_late(secs(1)));
        assert!(stream.is_late(secs(10)), "at the earliest time");
        assert!(!stream.is_late(secs(11)));
        assert!(!stream.is_late(None), "no timestamp: never late");
    }
}
