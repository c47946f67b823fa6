//! `ferry_core::hostlist::expand`: `ferry node add 'n[001-128]'`, `node list`, `node set`
//! and the profile commands expand a hostlist the administrator typed.
//!
//! expand caps the result at `MAX_HOSTS` names itself (and refuses a range or a product
//! of ranges beyond it before allocating), so the target needs no guard of its own: it
//! calls expand exactly as the CLI does. Entries longer than `MAX_ENTRY_BYTES` are
//! refused before expanding (the fix for the finding in docs/fuzzing.md), so the worst
//! case is 65,536 names of 255 bytes (16 MiB); run-all.sh still passes `-max_len=256`
//! so the fuzzer does not spend its time on inputs that are refused at once.
//!
//! The per-name checks below run on every name up to 4,096 names and on the first and
//! last few beyond that, so that the fuzzer spends its time in expand, not in them.
#![no_main]

use std::collections::HashSet;

use ferry_core::hostlist::{expand, MAX_HOSTS};
use ferry_core::{NodeName, ProfileName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The hostlist arrives through clap, which refuses arguments that are not UTF-8.
    let Ok(input) = std::str::from_utf8(data) else { return };
    match expand(input) {
        Ok(names) => {
            assert!(names.len() <= MAX_HOSTS, "{} names", names.len());
            let sample: Vec<&String> = if names.len() <= 4096 {
                names.iter().collect()
            } else {
                names.iter().take(16).chain(names.iter().rev().take(16)).collect()
            };
            if names.len() <= 4096 {
                let mut seen = HashSet::new();
                assert!(names.iter().all(|n| seen.insert(n)), "duplicate names from {input:?}");
            }
            // What the CLI does with each name next (ferry-cli's node_names/profile_names).
            for n in sample {
                let _ = NodeName::parse(n).map(|v| assert_eq!(v.as_str(), n));
                let _ = ProfileName::parse(n);
            }
        }
        Err(e) => drop(e.to_string()),
    }
});
