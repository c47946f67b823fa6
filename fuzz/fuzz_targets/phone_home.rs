//! Phone-home on the tunnel datasource: the body cloud-init's `phone_home` module posts
//! (`application/x-www-form-urlencoded`), or the JSON form, decoded into
//! `ferry_api::enroll::PhoneHome` exactly as `ferry_server::datasource` does, then
//! `ferry_server::datasource::boot_report`, whose output goes to the store,
//! `ferry node show` and `ferry known-hosts`.
//!
//! The same bytes go through both decoders (the server picks one by Content-Type).
#![no_main]

use ferry_api::enroll::PhoneHome;
use ferry_server::datasource::boot_report;
use libfuzzer_sys::fuzz_target;

fn check(form: PhoneHome) {
    let report = boot_report(form);
    for v in [&report.instance_id, &report.hostname, &report.fqdn].into_iter().flatten() {
        assert!(!v.is_empty() && v.len() <= 255, "{v:?}");
        assert!(v != "N/A" && v.trim() == v, "{v:?}");
        assert!(!v.chars().any(char::is_control), "{v:?}");
    }
    assert!(report.host_keys.len() <= 4);
    for (kind, key) in &report.host_keys {
        assert!(matches!(kind.as_str(), "dsa" | "rsa" | "ecdsa" | "ed25519"), "{kind}");
        // One known_hosts line each: no newline, no control character, a key type first.
        assert!(key.len() <= 16 * 1024, "{} bytes", key.len());
        assert!(!key.chars().any(char::is_control), "{key:?}");
        assert!(key.starts_with("ssh-") || key.starts_with("ecdsa-"), "{key:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(form) = serde_urlencoded::from_bytes::<PhoneHome>(data) {
        check(form);
    }
    if let Ok(form) = serde_json::from_slice::<PhoneHome>(data) {
        check(form);
    }
});
