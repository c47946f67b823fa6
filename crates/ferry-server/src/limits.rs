//! Limits on the provisioning listener (PRODUCT.md invariant 11): whoever is on the
//! provisioning network can reach it, so no caller may make it do unbounded work.
//!
//! - **Rate limits** on the enrollment endpoints (challenge, TPM credential,
//!   enrollment) and on asset-tag guesses at the boot artifact gate (`boot`): a token
//!   bucket per source and one for all sources. Over the limit the caller gets `429`
//!   with `Retry-After` and nothing happens: no nonce, no audit row (a flood must not
//!   fill the audit log), at most one log line per second per source. Boot scripts and
//!   ungated artifacts are not limited here: a boot storm downloads them by the
//!   thousand.
//! - **Fairness under a flood from many addresses.** A source is an IPv4 address or an
//!   IPv6 /64 ([`source_group`]). Its own bucket is checked first, so what it is
//!   refused costs the others nothing. Many sources each within their own rate can
//!   still empty the global bucket; for that case a *reserve* of a quarter of the
//!   global rate is kept for *light* sources — those that sent at most
//!   [`LIGHT_BURST`] requests lately, refilled one per [`LIGHT_PERIOD`], which is what
//!   a booting node sends. A flooding source is light for its first few requests only,
//!   so 500 flooding addresses take ~17 requests/s from the reserve (500 ×
//!   1/30 s), far below the default reserve of 500/s: nodes keep enrolling. A challenge
//!   from a source that already holds its share of outstanding nonces
//!   (`max_pending_nonces_per_source`) is refused before the global bucket too.
//! - **A cap on enrollments in progress** (`/v1/enroll`, `/v1/enroll/tpm`): beyond it
//!   `503` with `Retry-After: 1`. The body is read before a slot is taken, so a client
//!   that sends its body slowly holds no slot.
//! - **Slow clients**: `listen::serve` closes a connection whose request headers do not
//!   arrive within the header timeout (slowloris); the caller adds a timeout on the
//!   whole request.
//!
//! The buckets are `governor`'s (GCRA, lock-free for the global one, a sharded map for
//! the keyed one). The keyed map is bounded: idle sources (whose bucket is full again)
//! are evicted every [`SWEEP_EVERY`], and if more than [`MAX_SOURCES`] sources are
//! still active, the per-source limit is suspended until a sweep frees room rather
//! than growing the map — the global bucket still bounds everything then. A source
//! cannot be forged: it is the TCP peer, or the client a *trusted* proxy names
//! (`client_addr::client_address`, the function enrollment itself uses).

use crate::client_addr::source_group;
use crate::config::{ProvisioningConfig, ENROLL_RATE_RANGE, MIN_ENROLL_BURST};
use crate::error::HttpError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_api::ErrorKind;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Enrollment requests are small; anything bigger is not one.
pub const ENROLL_BODY_LIMIT: usize = 16 * 1024;

/// Most sources tracked at once by the per-source limiter (and by the once-per-second
/// log filter). An entry is a few dozen bytes; entries of idle sources are evicted.
pub const MAX_SOURCES: usize = 65_536;
/// How often idle sources are evicted.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Least time between two sweeps forced by a full table.
const SWEEP_WHEN_FULL_EVERY: Duration = Duration::from_millis(100);
/// A source is *light* while it has sent at most this many requests lately (two whole
/// enrollments), one more allowed every [`LIGHT_PERIOD`]; light sources may use the
/// reserve when the global bucket is empty.
pub const LIGHT_BURST: u32 = 2 * MIN_ENROLL_BURST;
pub const LIGHT_PERIOD: Duration = Duration::from_secs(30);
/// The reserve for light sources: this fraction of the global rate and burst.
const RESERVE_DIVISOR: f64 = 4.0;

/// One token bucket: `governor`'s quota plus the period, for Retry-After; `None` for a
/// rate of 0 (no limit). The values are validated ([`crate::Config::validate`]).
fn bucket(rate: f64, burst: u32) -> Option<(Quota, Duration)> {
    if rate == 0.0 {
        return None;
    }
    let period = Duration::try_from_secs_f64(1.0 / rate).ok()?;
    let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?);
    Some((quota, period))
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Source,
    Global,
    /// The source holds its share of outstanding nonces (`max_pending_nonces_per_source`).
    SourceNonces,
}

/// A refused request: how long the caller should wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub scope: Scope,
    pub retry_after_secs: u64,
}

impl IntoResponse for Throttled {
    fn into_response(self) -> Response {
        let message = match self.scope {
            Scope::Source => "too many enrollment requests from this address",
            Scope::Global => "too many enrollment requests",
            Scope::SourceNonces => "too many challenges outstanding from this address",
        };
        let message = format!("{message}; retry in {} s", self.retry_after_secs);
        with_retry_after(
            HttpError::new(StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimited, message),
            self.retry_after_secs,
        )
    }
}

/// `503 busy` with `Retry-After`.
pub fn busy(message: &str, retry_after_secs: u64) -> Response {
    with_retry_after(HttpError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Busy, message), retry_after_secs)
}

fn with_retry_after(e: HttpError, secs: u64) -> Response {
    let mut r = e.into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// The enrollment endpoints' limits, shared by every request of the listener. Keys are
/// source groups ([`source_group`]).
pub struct EnrollLimits {
    per_source: Option<(DefaultKeyedRateLimiter<IpAddr>, Duration)>,
    global: Option<(DefaultDirectRateLimiter, Duration)>,
    /// When the global bucket is empty: light sources (`light`) take from `reserve`.
    light: DefaultKeyedRateLimiter<IpAddr>,
    reserve: Option<DefaultDirectRateLimiter>,
    permits: Option<Arc<Semaphore>>,
    /// Lets one log line per second per source through.
    log_per_source: DefaultKeyedRateLimiter<IpAddr>,
    /// One log line per second when `log_per_source` is full.
    log_overflow: DefaultDirectRateLimiter,
    max_sources: usize,
    start: Instant,
    /// Milliseconds from `start` at the last sweep.
    last_sweep_ms: AtomicU64,
    refused: AtomicU64,
}

impl EnrollLimits {
    /// The limits of a validated configuration ([`crate::Config::validate`]).
    pub fn new(c: &ProvisioningConfig) -> Self {
        Self::with_max_sources(c, MAX_SOURCES)
    }

    fn with_max_sources(c: &ProvisioningConfig, max_sources: usize) -> Self {
        let per_source = bucket(c.enroll_rate_per_source, c.enroll_burst_per_source);
        let global = bucket(c.enroll_rate_global, c.enroll_burst_global);
        let reserve = match global {
            None => None,
            Some(_) => {
                let burst = ((f64::from(c.enroll_burst_global) / RESERVE_DIVISOR) as u32).max(MIN_ENROLL_BURST);
                // A rate too small to divide simply has no reserve.
                let rate = c.enroll_rate_global / RESERVE_DIVISOR;
                ENROLL_RATE_RANGE.contains(&rate).then(|| bucket(rate, burst)).flatten()
            }
        };
        let light = Quota::with_period(LIGHT_PERIOD)
            .expect("period > 0")
            .allow_burst(NonZeroU32::new(LIGHT_BURST).expect("LIGHT_BURST > 0"));
        let once_a_second = Quota::per_second(NonZeroU32::MIN);
        EnrollLimits {
            per_source: per_source.map(|(q, p)| (DefaultKeyedRateLimiter::keyed(q), p)),
            global: global.map(|(q, p)| (DefaultDirectRateLimiter::direct(q), p)),
            light: DefaultKeyedRateLimiter::keyed(light),
            reserve: reserve.map(|(q, _)| DefaultDirectRateLimiter::direct(q)),
            permits: (c.max_concurrent_enrollments > 0)
                .then(|| Arc::new(Semaphore::new(c.max_concurrent_enrollments.min(Semaphore::MAX_PERMITS)))),
            log_per_source: DefaultKeyedRateLimiter::keyed(once_a_second),
            log_overflow: DefaultDirectRateLimiter::direct(once_a_second),
            max_sources,
            start: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Takes a token from the source's bucket, then from the global one (or, for a
    /// light source when the global one is empty, from the reserve).
    pub fn check(&self, source: IpAddr) -> Result<(), Throttled> {
        let source = source_group(source);
        self.check_source(source)?;
        self.check_global(source)
    }

    /// The source's own bucket. It comes first so that one flooding source cannot
    /// drain the global bucket: what it is refused costs the others nothing.
    /// `source` is a [`source_group`].
    pub fn check_source(&self, source: IpAddr) -> Result<(), Throttled> {
        self.sweep_if_due();
        if let Some((limiter, period)) = &self.per_source {
            if limiter.len() < self.max_sources {
                if let Err(not_until) = limiter.check_key(&source) {
                    return Err(self.refuse(
                        Scope::Source,
                        not_until.wait_time_from(DefaultClock::default().now()),
                        *period,
                    ));
                }
            } else if self.log_overflow.check().is_ok() {
                tracing::warn!(
                    sources = limiter.len(),
                    "more than {} sources sent enrollment requests within seconds; the per-source limit is suspended \
                     until idle ones are evicted (the global limit still applies)",
                    self.max_sources
                );
            }
        }
        Ok(())
    }

    /// The global bucket; when it is empty, the reserve for a light source.
    pub fn check_global(&self, source: IpAddr) -> Result<(), Throttled> {
        let Some((limiter, period)) = &self.global else { return Ok(()) };
        let Err(not_until) = limiter.check() else { return Ok(()) };
        if self.light_and_reserved(source) {
            return Ok(());
        }
        Err(self.refuse(Scope::Global, not_until.wait_time_from(DefaultClock::default().now()), *period))
    }

    /// Whether `source` is light and the reserve has a token for it (taking both).
    fn light_and_reserved(&self, source: IpAddr) -> bool {
        let Some(reserve) = &self.reserve else { return false };
        // A full table of light sources admits no new one: the reserve is for sources
        // known to be light.
        let light = self.light.len() < self.max_sources && self.light.check_key(&source).is_ok();
        light && reserve.check().is_ok()
    }

    /// Retry-After: when the bucket has room for this request *and* the next one, so
    /// that an agent which waits that long gets its challenge and its enrollment through
    /// instead of being refused again at the second step. Whole seconds, at least 1.
    fn refuse(&self, scope: Scope, wait: Duration, period: Duration) -> Throttled {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let secs = (wait + period).as_secs_f64().ceil().max(1.0);
        Throttled { scope, retry_after_secs: secs as u64 }
    }

    /// The refusal of a challenge from a source that holds its share of nonces: they
    /// are used within a second by booting nodes, so retry after one.
    pub fn nonces_held(&self) -> Throttled {
        self.refused.fetch_add(1, Ordering::Relaxed);
        Throttled { scope: Scope::SourceNonces, retry_after_secs: 1 }
    }

    /// How many requests were refused by the rate limits since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Logs a refusal, at most once per second per source.
    pub fn log_refusal(&self, source: IpAddr, path: &str, t: Throttled) {
        let allowed = if self.log_per_source.len() < self.max_sources {
            self.log_per_source.check_key(&source).is_ok()
        } else {
            self.log_overflow.check().is_ok()
        };
        if allowed {
            tracing::warn!(
                %source,
                path,
                scope = ?t.scope,
                retry_after_secs = t.retry_after_secs,
                refused_total = self.refused(),
                "enrollment request over the rate limit, refused with 429 (logged at most once per second per source)"
            );
        }
    }

    /// Evicts idle sources every [`SWEEP_EVERY`], or sooner when the table is full.
    fn sweep_if_due(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        let since = Duration::from_millis(now.saturating_sub(last));
        if since < SWEEP_WHEN_FULL_EVERY {
            return;
        }
        let full = || {
            self.per_source.as_ref().is_some_and(|(l, _)| l.len() >= self.max_sources)
                || self.light.len() >= self.max_sources
                || self.log_per_source.len() >= self.max_sources
        };
        let due = since >= SWEEP_EVERY || full();
        // One request sweeps; the others go on.
        if due && self.last_sweep_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.sweep();
        }
    }

    fn sweep(&self) {
        if let Some((l, _)) = &self.per_source {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.light.retain_recent();
        self.light.shrink_to_fit();
        self.log_per_source.retain_recent();
        self.log_per_source.shrink_to_fit();
    }

    /// Sources currently tracked by the per-source limiter.
    pub fn tracked_sources(&self) -> usize {
        self.per_source.as_ref().map_or(0, |(l, _)| l.len())
    }

    /// A slot for one enrollment in progress, or `None` when all are taken. Always a
    /// slot when there is no cap.
    pub fn enrollment_slot(&self) -> Option<Option<OwnedSemaphorePermit>> {
        match &self.permits {
            None => Some(None),
            Some(s) => s.clone().try_acquire_owned().ok().map(Some),
        }
    }
}

/// Middleware on `/v1/enroll` and `/v1/enroll/tpm`: reads the body (at most
/// [`ENROLL_BODY_LIMIT`]), then takes a slot for the enrollment or answers 503.
pub async fn enrollment_slot(State(limits): State<Arc<EnrollLimits>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, ENROLL_BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<http_body_util::LengthLimitError>().is_some());
            return if too_large {
                let m = format!("an enrollment request is at most {ENROLL_BODY_LIMIT} bytes");
                HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::Invalid, m).into_response()
            } else {
                HttpError::bad_request(format!("cannot read the request body: {e}")).into_response()
            };
        }
    };
    let Some(_slot) = limits.enrollment_slot() else {
        tracing::debug!(path = %parts.uri.path(), "enrollment refused with 503: all slots taken");
        return busy("too many enrollments in progress; retry shortly", 1);
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rate: f64, burst: u32, global: f64, global_burst: u32, slots: usize) -> ProvisioningConfig {
        ProvisioningConfig {
            enroll_rate_per_source: rate,
            enroll_burst_per_source: burst,
            enroll_rate_global: global,
            enroll_burst_global: global_burst,
            max_concurrent_enrollments: slots,
            ..ProvisioningConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_429_with_room_for_two_steps_and_others_are_served() {
        // One token per 10 s: nothing refills while the test runs.
        let l = EnrollLimits::new(&config(0.1, 3, 0.0, 0, 0));
        for _ in 0..3 {
            assert_eq!(l.check(ip("10.0.0.1")), Ok(()));
        }
        let t = l.check(ip("10.0.0.1")).unwrap_err();
        assert_eq!(t.scope, Scope::Source);
        // The next token in ≤ 10 s, room for the following step 10 s later.
        assert!((19..=20).contains(&t.retry_after_secs), "{t:?}");
        assert_eq!(l.check(ip("10.0.0.2")), Ok(()), "another source has its own bucket");
        assert_eq!(l.refused(), 1);
        let r = t.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], t.retry_after_secs.to_string().as_str());
    }

    #[test]
    fn the_global_bucket_holds_across_sources_and_a_refused_source_does_not_drain_it() {
        let l = EnrollLimits::new(&config(0.1, 3, 0.1, 5, 0));
        // One source floods: 3 admitted, the rest refused by its own bucket, which
        // takes nothing from the global one.
        for _ in 0..3 {
            assert_eq!(l.check(ip("10.0.0.1")), Ok(()));
        }
        for _ in 0..50 {
            assert_eq!(l.check(ip("10.0.0.1")).unwrap_err().scope, Scope::Source);
        }
        assert_eq!(l.check(ip("10.0.0.2")), Ok(()));
        assert_eq!(l.check(ip("10.0.0.2")), Ok(()));
        // 5 of 5 global tokens used: new sources get the reserve (3 tokens), then no more.
        for i in 3..6 {
            assert_eq!(l.check(ip(&format!("10.0.0.{i}"))), Ok(()), "light source {i} from the reserve");
        }
        assert_eq!(l.check(ip("10.0.0.9")).unwrap_err().scope, Scope::Global, "the reserve is bounded too");
    }

    #[test]
    fn sources_flooding_within_their_own_rate_cannot_starve_a_booting_node() {
        // Generous per-source buckets; a global one of 100 and a reserve of 25.
        let l = EnrollLimits::new(&config(1e6, 1_000, 0.1, 100, 0));
        let flooders: Vec<IpAddr> = (1..=3).map(|i| ip(&format!("10.9.0.{i}"))).collect();
        let mut admitted = 0;
        for _ in 0..1_000 {
            for f in &flooders {
                admitted += usize::from(l.check(*f).is_ok());
            }
        }
        // The global 100, plus each flooder's few light requests from the reserve.
        assert_eq!(admitted, 100 + 3 * LIGHT_BURST as usize, "{admitted}");
        assert_eq!(l.check(flooders[0]).unwrap_err().scope, Scope::Global);
        // A node that boots now gets its challenge and its enrollment through.
        let node = ip("10.0.0.7");
        assert_eq!(l.check(node), Ok(()));
        assert_eq!(l.check(node), Ok(()));
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_64() {
        let l = EnrollLimits::new(&config(0.1, 3, 0.0, 0, 0));
        for i in 1..=3 {
            assert_eq!(l.check(ip(&format!("2001:db8:0:1::{i}"))), Ok(()));
        }
        assert_eq!(l.check(ip("2001:db8:0:1:ffff::9")).unwrap_err().scope, Scope::Source, "same /64, same bucket");
        assert_eq!(l.check(ip("2001:db8:0:2::1")), Ok(()), "another /64");
    }

    /// The refusals of bad values moved to `config::validate` (its tests).
    #[test]
    fn zero_disables_every_limit() {
        let l = EnrollLimits::new(&config(0.0, 0, 0.0, 0, 0));
        for _ in 0..10_000 {
            assert_eq!(l.check(ip("10.0.0.1")), Ok(()));
        }
        assert!(l.enrollment_slot().is_some());
    }

    #[test]
    fn the_source_table_is_bounded_idle_sources_are_evicted_and_a_full_table_falls_back_to_global() {
        // Fast refill (1 ms per token): a bucket is full, so idle, 3 ms after its use.
        let l = EnrollLimits::with_max_sources(&config(1000.0, 3, 0.1, 200, 0), 100);
        for i in 0..100u32 {
            assert_eq!(l.check(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))), Ok(()));
        }
        assert_eq!(l.tracked_sources(), 100);
        // The table is full: new sources are limited by the global bucket only, and the
        // table does not grow.
        for i in 100..150u32 {
            assert_eq!(l.check(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))), Ok(()));
        }
        assert!(l.tracked_sources() <= 100, "{}", l.tracked_sources());
        // Once idle, the sources are evicted by the next sweep forced by the full table.
        std::thread::sleep(SWEEP_WHEN_FULL_EVERY + Duration::from_millis(20));
        assert_eq!(l.check(ip("10.1.0.1")), Ok(()));
        assert!(l.tracked_sources() <= 2, "idle sources evicted: {}", l.tracked_sources());
        // Everything above went through the global bucket: 151 of 200; then the reserve
        // (50) for sources that are light, then nothing.
        for i in 0..(49 + 50) {
            assert_eq!(l.check(IpAddr::from(std::net::Ipv4Addr::from(0x0a02_0000 + i))), Ok(()));
        }
        assert_eq!(l.check(ip("10.3.0.1")).unwrap_err().scope, Scope::Global);
    }

    /// The concurrency cap, through the real middleware: one enrollment is held in its
    /// handler, the next gets 503 with Retry-After: 1 and never reaches a handler; once
    /// the first is done, a slot is free again.
    #[tokio::test]
    async fn a_full_house_of_enrollments_answers_503_and_runs_nothing() {
        use axum::routing::post;
        use axum::Router;
        use tower::ServiceExt;
        let limits = Arc::new(EnrollLimits::new(&config(0.0, 0, 0.0, 0, 1)));
        let entered = Arc::new(tokio::sync::Semaphore::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let ran = Arc::new(AtomicU64::new(0));
        let handler = {
            let (entered, release, ran) = (entered.clone(), release.clone(), ran.clone());
            move |body: axum::body::Bytes| async move {
                ran.fetch_add(1, Ordering::SeqCst);
                entered.add_permits(1);
                if body.as_ref() == b"hold" {
                    release.notified().await;
                }
                "done"
            }
        };
        let app = Router::new()
            .route("/v1/enroll", post(handler))
            .route_layer(axum::middleware::from_fn_with_state(limits.clone(), enrollment_slot));
        let req = |body: &'static str| Request::post("/v1/enroll").body(Body::from(body)).unwrap();

        let held = tokio::spawn(app.clone().oneshot(req("hold")));
        let _ = entered.acquire().await.unwrap();
        let r = app.clone().oneshot(req("second")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "busy", "{v}");
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the refused request ran nothing");

        release.notify_one();
        assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
        let r = app.clone().oneshot(req("third")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "the slot was given back");

        // A body over the limit is refused before any slot is taken.
        let big = Request::post("/v1/enroll").body(Body::from(vec![b'x'; ENROLL_BODY_LIMIT + 1])).unwrap();
        assert_eq!(app.oneshot(big).await.unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }
}
