//! Prometheus metrics (OpenMetrics text on the admin listener's `/metrics`): what an
//! operator watches during a boot storm. Labels are bounded enums and document names —
//! never node names, keys or secrets.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are lower case on the wire
pub enum EnrollResult {
    accepted,
    refused,
    throttled,
    busy,
    invalid,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: EnrollResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// How the tunnel ended: phone-home, expired, replaced, revoked, deleted, no-handshake.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

/// A listener's connections: `cause` is the cap that refused one (`per-source`,
/// `total`), or why the server ended one (`idle`; `closed`: its tunnel ended).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabel {
    pub listener: &'static str,
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DocumentLabel {
    pub document: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabel {
    /// Why the boot gate refused: wrong-tag, locked, throttled.
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub enrollments: Family<ResultLabel, Counter>,
    pub active_tunnels: Gauge,
    pub tunnel_lifetime: Family<ReasonLabel, Histogram>,
    pub phone_home_latency: Histogram,
    pub document_latency: Family<DocumentLabel, Histogram>,
    pub secrets_delivered: Counter,
    pub connections_open: Family<ListenerLabel, Gauge>,
    pub connections_accepted: Family<ListenerLabel, Counter>,
    pub connections_refused: Family<ConnectionLabel, Counter>,
    pub connections_cut: Family<ConnectionLabel, Counter>,
    /// Gated artifact requests refused after naming a gated node, by reason.
    pub boot_gate_refusals: Family<GateLabel, Counter>,
    /// Boot gates locked after too many wrong asset tags: alert on any increase.
    pub boot_gate_lockouts: Counter,
    /// Repeated audit events folded into counts, and audit entries lost (the database
    /// refused them even after retries); copied from the store at each scrape.
    pub audit_folded: Counter,
    pub audit_lost: Counter,
    write_batches: Counter,
    batched_writes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let enrollments = Family::<ResultLabel, Counter>::default();
        registry.register("enrollments", "Enrollment attempts by result", enrollments.clone());
        let active_tunnels = Gauge::default();
        registry.register("active_tunnels", "Tunnels open now on this server", active_tunnels.clone());
        // 0.5 s .. ~4.5 h: phone-home in seconds, abandoned tunnels at their TTL.
        let tunnel_lifetime = Family::<ReasonLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.5, 2.0, 16))
        });
        registry.register(
            "tunnel_lifetime_seconds",
            "How long tunnels lived, by how they ended",
            tunnel_lifetime.clone(),
        );
        let phone_home_latency = Histogram::new(exponential_buckets(0.05, 2.0, 16));
        registry.register(
            "phone_home_latency_seconds",
            "From enrollment to phone-home (the node's configuration time)",
            phone_home_latency.clone(),
        );
        let document_latency = Family::<DocumentLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register("document_serve_seconds", "Time to serve a datasource document", document_latency.clone());
        let secrets_delivered = Counter::default();
        registry.register("secrets_delivered", "Secrets rendered into tunnel documents", secrets_delivered.clone());
        let connections_open = Family::<ListenerLabel, Gauge>::default();
        registry.register("connections", "Connections open now, by listener", connections_open.clone());
        let connections_accepted = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_accepted",
            "Connections accepted (within the caps), by listener: with keep-alive one per node boot on the datasource",
            connections_accepted.clone(),
        );
        let connections_refused = Family::<ConnectionLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because a cap was reached, by listener and cap",
            connections_refused.clone(),
        );
        let connections_cut = Family::<ConnectionLabel, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections the server ended, by listener and cause (idle; closed: their tunnel ended)",
            connections_cut.clone(),
        );
        let boot_gate_refusals = Family::<GateLabel, Counter>::default();
        registry.register(
            "boot_gate_refusals",
            "Gated boot artifact requests naming a gated node that were refused, by reason",
            boot_gate_refusals.clone(),
        );
        let boot_gate_lockouts = Counter::default();
        registry.register(
            "boot_gate_lockouts",
            "Asset-tag boot gates locked after too many wrong tags (someone guessing a tag)",
            boot_gate_lockouts.clone(),
        );
        let audit_folded = Counter::default();
        registry.register(
            "audit_folded",
            "Repeated audit events (boot-script fetches, document deliveries) counted into one entry",
            audit_folded.clone(),
        );
        let audit_lost = Counter::default();
        registry.register("audit_lost", "Audit entries the database refused even after retries", audit_lost.clone());
        let write_batches = Counter::default();
        registry.register(
            "store_write_batches",
            "PostgreSQL transactions that committed several tunnel opens and phone-homes at once (group commit)",
            write_batches.clone(),
        );
        let batched_writes = Counter::default();
        registry.register(
            "store_batched_writes",
            "Tunnel opens and phone-homes committed in those groups (PostgreSQL)",
            batched_writes.clone(),
        );
        Metrics {
            registry,
            connections_open,
            connections_accepted,
            connections_refused,
            connections_cut,
            enrollments,
            active_tunnels,
            tunnel_lifetime,
            phone_home_latency,
            document_latency,
            secrets_delivered,
            boot_gate_refusals,
            boot_gate_lockouts,
            audit_folded,
            audit_lost,
            write_batches,
            batched_writes,
        }
    }
}

impl Metrics {
    pub fn gate_refused(&self, reason: &'static str) {
        self.boot_gate_refusals.get_or_create(&GateLabel { reason }).inc();
    }

    /// Copies the store's audit counts (kept by the store, exported here).
    pub fn set_audit_counts(&self, counts: ferry_store::AuditCounts) {
        use std::sync::atomic::Ordering::Relaxed;
        self.audit_folded.inner().store(counts.folded, Relaxed);
        self.audit_lost.inner().store(counts.lost, Relaxed);
    }

    /// Copies the store's group-commit counts (kept by the store, exported here).
    pub fn set_write_batches(&self, counts: ferry_store::WriteBatchCounts) {
        use std::sync::atomic::Ordering::Relaxed;
        self.write_batches.inner().store(counts.batches, Relaxed);
        self.batched_writes.inner().store(counts.jobs, Relaxed);
    }

    pub fn enrollment(&self, result: EnrollResult) {
        self.enrollments.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts `POST /v1/enroll` outcomes by status: a middleware on the provisioning
    /// router, so every path out of the handler (and the limits in front of it) counts.
    pub async fn count_enrollments(
        axum::extract::State(metrics): axum::extract::State<std::sync::Arc<Metrics>>,
        req: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let enroll = req.method() == axum::http::Method::POST && req.uri().path() == ferry_api::enroll::ENROLL_PATH;
        let resp = next.run(req).await;
        if enroll {
            use axum::http::StatusCode;
            metrics.enrollment(match resp.status() {
                s if s.is_success() => EnrollResult::accepted,
                StatusCode::UNAUTHORIZED => EnrollResult::refused,
                StatusCode::TOO_MANY_REQUESTS => EnrollResult::throttled,
                StatusCode::SERVICE_UNAVAILABLE => EnrollResult::busy,
                _ => EnrollResult::invalid,
            });
        }
        resp
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::default();
        m.enrollment(EnrollResult::accepted);
        m.enrollment(EnrollResult::refused);
        m.enrollment(EnrollResult::refused);
        m.active_tunnels.set(3);
        m.tunnel_lifetime.get_or_create(&ReasonLabel { reason: "phone-home" }).observe(2.0);
        m.document_latency.get_or_create(&DocumentLabel { document: "user-data" }).observe(0.001);
        m.gate_refused("wrong-tag");
        m.boot_gate_lockouts.inc();
        m.set_audit_counts(ferry_store::AuditCounts { folded: 41, lost: 0 });
        m.set_write_batches(ferry_store::WriteBatchCounts { batches: 5, jobs: 23 });
        let text = m.encode();
        for line in [
            "ferry_enrollments_total{result=\"accepted\"} 1",
            "ferry_enrollments_total{result=\"refused\"} 2",
            "ferry_active_tunnels 3",
            "ferry_tunnel_lifetime_seconds_count{reason=\"phone-home\"} 1",
            "ferry_document_serve_seconds_count{document=\"user-data\"} 1",
            "ferry_boot_gate_refusals_total{reason=\"wrong-tag\"} 1",
            "ferry_boot_gate_lockouts_total 1",
            "ferry_audit_folded_total 41",
            "ferry_audit_lost_total 0",
            "ferry_store_write_batches_total 5",
            "ferry_store_batched_writes_total 23",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
