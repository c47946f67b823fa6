//! Which TPM the agent talks to: a TCTI ("TPM command transmission interface") string as
//! the TSS libraries take it, from `ferry.tpm` on the kernel command line or `--tpm`.
//!
//! Accepted forms (anything else is a configuration error that says what to write):
//!
//! - `ferry.tpm`, `ferry.tpm=`, `device` or `device:` → `device:/dev/tpmrm0` (the kernel's
//!   resource manager);
//! - `device:/ABSOLUTE/PATH`, e.g. `device:/dev/tpm0` (the raw TPM, no resource manager);
//! - `swtpm[:host=H,port=P]` and `mssim[:host=H,port=P]` (software TPMs; `host` and
//!   `port` only, each at most once; defaults localhost and 2321);
//! - `tabrmd[:bus_name=N,bus_type=system|session]` (the user-space resource manager).

use std::fmt;

/// The TPM device the kernel's resource manager exposes.
pub const DEFAULT_DEVICE: &str = "/dev/tpmrm0";

/// A validated, normalized TCTI string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcti(String);

impl Tcti {
    /// Validates a TCTI string (`""` and `"device"` mean `device:/dev/tpmrm0`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = |why: &str| {
            format!(
                "invalid TPM TCTI {s:?} (ferry.tpm= / --tpm): {why}; use ferry.tpm alone for \
                 device:{DEFAULT_DEVICE}, or e.g. ferry.tpm=device:/dev/tpm0, \
                 ferry.tpm=swtpm:host=127.0.0.1,port=2321"
            )
        };
        let (kind, conf) = match s.split_once(':') {
            Some((kind, conf)) => (kind, conf),
            None => (s, ""),
        };
        match kind {
            "" | "device" if conf.is_empty() => Ok(Tcti(format!("device:{DEFAULT_DEVICE}"))),
            "device" => {
                if !conf.starts_with('/') {
                    return Err(bad("the device path must be absolute (device:/dev/tpmrm0)"));
                }
                if conf.contains(|c: char| c.is_whitespace() || c.is_control() || c == ',') {
                    return Err(bad("the device path contains a space, a comma or a control character"));
                }
                Ok(Tcti(s.to_string()))
            }
            "swtpm" | "mssim" => {
                check_options(conf, &["host", "port"], |key, value| match key {
                    "port" => match value.parse::<u16>() {
                        Ok(p) if p > 0 => Ok(()),
                        _ => Err(format!("port {value:?} is not a TCP port")),
                    },
                    _ => Ok(()),
                })
                .map_err(|why| bad(&why))?;
                Ok(Tcti(s.to_string()))
            }
            "tabrmd" => {
                check_options(conf, &["bus_name", "bus_type"], |key, value| match (key, value) {
                    ("bus_type", "system" | "session") | ("bus_name", _) => Ok(()),
                    _ => Err(format!("bus_type {value:?} is neither system nor session")),
                })
                .map_err(|why| bad(&why))?;
                Ok(Tcti(s.to_string()))
            }
            _ => Err(bad("unknown interface (expected device, swtpm, mssim or tabrmd)")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The device path of a `device:` TCTI.
    pub fn device_path(&self) -> Option<&str> {
        self.0.strip_prefix("device:")
    }
}

impl fmt::Display for Tcti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks `key=value[,key=value...]`: known keys, each at most once, non-empty values.
fn check_options(conf: &str, keys: &[&str], check: impl Fn(&str, &str) -> Result<(), String>) -> Result<(), String> {
    if conf.is_empty() {
        return Ok(());
    }
    let mut seen = Vec::new();
    for option in conf.split(',') {
        let Some((key, value)) = option.split_once('=') else {
            return Err(format!("{option:?} is not key=value"));
        };
        if !keys.contains(&key) {
            return Err(format!("unknown option {key:?} (expected {})", keys.join(", ")));
        }
        if seen.contains(&key) {
            return Err(format!("{key} is given twice"));
        }
        if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(format!("{key} has an empty or invalid value"));
        }
        check(key, value)?;
        seen.push(key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        for (input, want) in [
            ("", "device:/dev/tpmrm0"),
            ("device", "device:/dev/tpmrm0"),
            ("device:", "device:/dev/tpmrm0"),
            (" device:/dev/tpm0 ", "device:/dev/tpm0"),
            ("swtpm", "swtpm"),
            ("swtpm:host=127.0.0.1,port=2321", "swtpm:host=127.0.0.1,port=2321"),
            ("swtpm:port=2321", "swtpm:port=2321"),
            ("mssim:host=localhost", "mssim:host=localhost"),
            ("tabrmd", "tabrmd"),
            ("tabrmd:bus_type=session", "tabrmd:bus_type=session"),
        ] {
            assert_eq!(Tcti::parse(input).map(|t| t.to_string()), Ok(want.to_string()), "{input:?}");
        }
        assert_eq!(Tcti::parse("device").expect("valid").device_path(), Some("/dev/tpmrm0"));
        assert_eq!(Tcti::parse("swtpm").expect("valid").device_path(), None);
    }

    #[test]
    fn rejected_forms_say_what_to_write() {
        for bad in [
            "tpm0",
            "/dev/tpm0",
            "device:dev/tpm0",
            "device:/dev/tpm 0",
            "swtpm:hots=127.0.0.1",
            "swtpm:port=0",
            "swtpm:port=70000",
            "swtpm:port=1,port=2",
            "swtpm:host=",
            "swtpm:host",
            "mssim:,",
            "tabrmd:bus_type=bus",
            "libtpms",
        ] {
            let err = Tcti::parse(bad).expect_err(bad);
            assert!(err.contains("ferry.tpm=") && err.contains("device:/dev/tpm0"), "{bad}: {err}");
        }
    }
}
