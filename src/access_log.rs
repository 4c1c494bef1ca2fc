//! The access log: one JSON line per API request, formatted on the request's thread without
//! allocating and written by a dedicated thread, so a slow or blocked log sink never slows or
//! blocks a request.
//!
//! Why not a `tracing` event: a span plus an event through tracing-subscriber's JSON formatter
//! cost about 18 µs of CPU per request, more than the rest of a cache hit. Here a line is
//! formatted into a thread-local scratch buffer (itoa for numbers, a small JSON escaper for the
//! few strings) and copied into one shared, bounded buffer under a short lock. The writer thread
//! swaps that buffer for its spare and writes the batch to the sink (stdout by default). When the
//! buffer is full the line is dropped and counted (`defender_proxy_access_log_dropped_total`):
//! requests never wait for the log.
//!
//! Diagnostic events keep going through `tracing`; this module carries only the per-request line.
//! Nothing secret is ever given to it: the request id, method, route name, consumer name, cache
//! result, statuses and times.

use std::{
    cell::{Cell, RefCell},
    io::Write,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use parking_lot::{Condvar, Mutex};
use prometheus_client::metrics::counter::Counter;

use crate::config::TelemetryConfig;

/// How long a line may sit in the buffer before the writer wakes up on its own.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// What one access-log line says about a request. Every string is already free of secrets.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    /// `get_incident`, `list_incidents`, `update_incident` or `other`.
    pub route: &'a str,
    /// The configured consumer name, or `unauthenticated`.
    pub consumer: &'a str,
    /// Reserved for the multi-tenant proxy: written as `null` until requests carry a tenant.
    pub tenant: Option<&'a str>,
    /// `hit`, `miss`, `collapsed`, `stale`, `bypass`, or `none` when the proxy answered itself.
    pub cache: &'a str,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub queued: Duration,
    pub duration: Duration,
}

/// The access log's shared half: the bounded buffer the requests fill and the writer empties.
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer (buffer past its watermark, a flush asked for, or closing).
    wake: Condvar,
    /// Wakes callers of [`AccessLog::flush`] after each written batch.
    written_cv: Condvar,
    capacity: usize,
    written: Counter,
    dropped: Counter,
}

struct State {
    buf: Vec<u8>,
    /// Lines in `buf`.
    lines: u64,
    /// Lines ever accepted into the buffer, and lines the writer has finished with (written or
    /// lost to a sink error): a flush waits for the second to reach the first.
    accepted: u64,
    done: u64,
    flush_asked: bool,
    closed: bool,
}

/// The per-request access log (see the module documentation). Cheap to share behind an `Arc`.
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
    /// Share of successful requests logged (errors are always logged).
    sample: f64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Errors creating the access log.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot start the access log writer thread: {0}")]
    Spawn(#[from] std::io::Error),
}

impl AccessLog {
    /// An access log that records nothing (`telemetry.access_log = false`).
    pub fn disabled() -> AccessLog {
        AccessLog {
            shared: None,
            sample: 0.0,
            writer: Mutex::new(None),
        }
    }

    /// The access log `config` asks for, writing to `sink` (stdout in production, a pipe or an
    /// in-memory buffer in tests). `written` and `dropped` are the metrics' counters.
    pub fn new(
        config: &TelemetryConfig,
        sink: Box<dyn Write + Send>,
        written: Counter,
        dropped: Counter,
    ) -> Result<AccessLog, AccessLogError> {
        if !config.access_log {
            return Ok(AccessLog::disabled());
        }
        let capacity = config.access_log_buffer;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(capacity),
                lines: 0,
                accepted: 0,
                done: 0,
                flush_asked: false,
                closed: false,
            }),
            wake: Condvar::new(),
            written_cv: Condvar::new(),
            capacity,
            written,
            dropped,
        });
        let for_writer = shared.clone();
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(&for_writer, sink))?;
        Ok(AccessLog {
            shared: Some(shared),
            sample: config.access_log_sample,
            writer: Mutex::new(Some(handle)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Formats and queues one line; never blocks on the sink. A line that does not fit in the
    /// buffer is dropped and counted.
    pub fn record(&self, line: &Line<'_>) {
        let Some(shared) = &self.shared else { return };
        if self.sample < 1.0 && line.status < 400 && !sampled(self.sample) {
            return;
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            format_line(&mut scratch, line, SystemTime::now());
            let mut st = shared.state.lock();
            if st.closed || st.buf.len() + scratch.len() > shared.capacity {
                drop(st);
                shared.dropped.inc();
                return;
            }
            let before = st.buf.len();
            st.buf.extend_from_slice(&scratch);
            st.lines += 1;
            st.accepted += 1;
            // Wake the writer once per quarter buffer, not per line: a wake-up is a system call.
            let watermark = shared.capacity / 4;
            let crossed = before < watermark && st.buf.len() >= watermark;
            drop(st);
            if crossed {
                shared.wake.notify_one();
            }
        });
    }

    /// Waits until every line recorded before this call has been handed to the sink, for at most
    /// `timeout`. Returns false on timeout (a blocked sink). For shutdown and tests.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(shared) = &self.shared else { return true };
        let deadline = std::time::Instant::now() + timeout;
        let mut st = shared.state.lock();
        let target = st.accepted;
        while st.done < target {
            st.flush_asked = true;
            shared.wake.notify_one();
            if shared.written_cv.wait_until(&mut st, deadline).timed_out() {
                return st.done >= target;
            }
        }
        true
    }
}

impl Drop for AccessLog {
    /// Lets the writer write what is buffered, then end. It is not joined: a blocked sink must
    /// not block the process's exit (call [`AccessLog::flush`] first to wait, bounded).
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.state.lock().closed = true;
            shared.wake.notify_one();
        }
        drop(self.writer.lock().take());
    }
}

/// The writer thread: takes the whole buffer at once (leaving its spare in its place, so the
/// steady state allocates nothing) and writes it while requests fill the other.
fn write_loop(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let mut spare: Vec<u8> = Vec::with_capacity(shared.capacity);
    loop {
        let (lines, closed) = {
            let mut st = shared.state.lock();
            while st.buf.is_empty() && !st.closed {
                shared.wake.wait_for(&mut st, FLUSH_EVERY);
            }
            if !st.flush_asked && !st.closed && st.buf.len() < shared.capacity / 4 {
                // Let a trickle of lines gather for a moment rather than waking per line.
                shared.wake.wait_for(&mut st, FLUSH_EVERY);
            }
            st.flush_asked = false;
            std::mem::swap(&mut st.buf, &mut spare);
            let lines = std::mem::take(&mut st.lines);
            (lines, st.closed)
        };
        if !spare.is_empty() {
            let ok = sink.write_all(&spare).and_then(|()| sink.flush()).is_ok();
            if ok {
                shared.written.inc_by(lines);
            } else {
                shared.dropped.inc_by(lines);
            }
            spare.clear();
        }
        let mut st = shared.state.lock();
        st.done += lines;
        shared.written_cv.notify_all();
        if closed && st.buf.is_empty() {
            return;
        }
    }
}

thread_local! {
    /// Each request thread's formatting buffer, reused line after line.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// xorshift state for sampling; seeded per thread.
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    // Any non-zero start works for xorshift; mix in the thread's stack address for variety.
    let local = 0u8;
    (nanos ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}

/// True with probability `p` (a cheap per-thread xorshift: sampling needs no strong randomness).
fn sampled(p: f64) -> bool {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        ((x >> 11) as f64 / (1u64 << 53) as f64) < p
    })
}

/// Appends one line (with its newline) to `out`.
pub fn format_line(out: &mut Vec<u8>, line: &Line<'_>, now: SystemTime) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
    json_str(out, line.request_id);
    out.extend_from_slice(b",\"method\":");
    json_str(out, line.method);
    out.extend_from_slice(b",\"route\":");
    json_str(out, line.route);
    out.extend_from_slice(b",\"consumer\":");
    json_str(out, line.consumer);
    out.extend_from_slice(b",\"tenant\":");
    match line.tenant {
        Some(t) => json_str(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"cache\":");
    json_str(out, line.cache);
    out.extend_from_slice(b",\"status\":");
    int(out, line.status);
    out.extend_from_slice(b",\"upstream_status\":");
    match line.upstream_status {
        Some(s) => int(out, s),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"queued_ms\":");
    int(out, line.queued.as_millis() as u64);
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, line.duration);
    out.extend_from_slice(b"}\n");
}

fn int<I: itoa::Integer>(out: &mut Vec<u8>, i: I) {
    out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
}

/// Milliseconds with three decimals (microsecond resolution), without floating point.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros() as u64;
    int(out, us / 1000);
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// A JSON string: quotes, backslashes and control characters escaped; everything else as is
/// (the input is UTF-8, so the output is too).
fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// RFC 3339 UTC with microseconds, e.g. `2026-12-01T00:55:03.123456Z`.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    let two = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]);
    int(out, y);
    out.push(b'-');
    two(out, m as u64);
    out.push(b'-');
    two(out, day as u64);
    out.push(b'T');
    two(out, sod / 3600);
    out.push(b':');
    two(out, sod / 60 % 60);
    out.push(b':');
    two(out, sod % 60);
    out.push(b'.');
    let us = d.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut v = us;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line<'static> {
        Line {
            request_id: "abc\"\\\n\u{1}é",
            method: "GET",
            route: "get_incident",
            consumer: "soar",
            tenant: None,
            cache: "hit",
            status: 200,
            upstream_status: None,
            queued: Duration::from_millis(12),
            duration: Duration::from_micros(1_234_567),
        }
    }

    #[test]
    fn a_line_is_one_valid_json_object_with_every_field() {
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456);
        format_line(&mut out, &line(), at);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "escaped newline");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["request_id"], "abc\"\\\n\u{1}é");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["route"], "get_incident");
        assert_eq!(v["consumer"], "soar");
        assert!(v["tenant"].is_null());
        assert_eq!(v["cache"], "hit");
        assert_eq!(v["status"], 200);
        assert!(v["upstream_status"].is_null());
        assert_eq!(v["queued_ms"], 12);
        assert_eq!(v["duration_ms"], 1234.567);
        assert_eq!(v["message"], "request");
        // The same instant as the time crate formats it.
        let expected = time::OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_000)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        assert_eq!(v["timestamp"], expected);
    }

    #[test]
    fn civil_dates_match_the_time_crate() {
        for days in [-1, 0, 59, 365, 10_957, 11_016, 19_782, 20_000, 47_482, 2_932_896] {
            let t = time::OffsetDateTime::from_unix_timestamp(days * 86_400).unwrap();
            let (y, m, d) = civil_from_days(days);
            assert_eq!(
                (y, m, d),
                (i64::from(t.year()), u8::from(t.month()) as u32, u32::from(t.day()))
            );
        }
    }

    #[test]
    fn sampling_keeps_roughly_the_share_asked_for() {
        let kept = (0..100_000).filter(|_| sampled(0.25)).count();
        assert!((20_000..30_000).contains(&kept), "{kept}");
        assert!((0..1000).all(|_| !sampled(0.0)));
    }

    fn config(buffer: usize) -> TelemetryConfig {
        TelemetryConfig {
            access_log_buffer: buffer,
            ..TelemetryConfig::default()
        }
    }

    #[derive(Clone, Default)]
    struct Memory(Arc<Mutex<Vec<u8>>>);
    impl Write for Memory {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_and_flush_waits_for_it() {
        let sink = Memory::default();
        let (written, dropped) = (Counter::default(), Counter::default());
        let log = AccessLog::new(
            &config(1 << 20),
            Box::new(sink.clone()),
            written.clone(),
            dropped.clone(),
        )
        .unwrap();
        for _ in 0..1000 {
            log.record(&line());
        }
        assert!(log.flush(Duration::from_secs(10)));
        let text = String::from_utf8(sink.0.lock().clone()).unwrap();
        assert_eq!(text.lines().count(), 1000);
        assert_eq!((written.get(), dropped.get()), (1000, 0));
    }

    /// A sink that blocks until released, like a full pipe nobody reads.
    struct Blocked(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>, Memory);
    impl Write for Blocked {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.1.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_sink_drops_and_counts_instead_of_blocking() {
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let memory = Memory::default();
        let (written, dropped) = (Counter::default(), Counter::default());
        let log = AccessLog::new(
            &config(4096),
            Box::new(Blocked(gate.clone(), memory.clone())),
            written.clone(),
            dropped.clone(),
        )
        .unwrap();
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            log.record(&line());
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "recording never waits for the sink"
        );
        assert!(!log.flush(Duration::from_millis(50)), "the sink is blocked");
        assert!(dropped.get() > 0);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        assert!(log.flush(Duration::from_secs(10)));
        let lines = String::from_utf8(memory.0.lock().clone()).unwrap().lines().count() as u64;
        assert_eq!(lines, written.get());
        assert_eq!(
            written.get() + dropped.get(),
            1000,
            "every line is written or counted as dropped"
        );
    }
}
