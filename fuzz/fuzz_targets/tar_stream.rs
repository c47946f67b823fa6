//! `ferry_image::tarstream`: the tar reader that unpacks a node image (issue 16), fed
//! what `ferry image import` reads from an admin's tar and what a node reads from the
//! provisioning network after decryption — and `parse_pax`, its PAX record parser.
//!
//! Asserts: PAX records written back by their length parse to the same records; every
//! member's data reads as exactly its size (never more) or fails; a sparse member's map
//! fits its file and adds up to its stored data; after the end, the reader stays at the
//! end; memory stays bounded (meta entries are capped at 16 MiB).
#![no_main]

use ferry_image::tarstream::{parse_pax, Reader};
use libfuzzer_sys::fuzz_target;
use std::io::Read;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = parse_pax(data) {
        let mut again = Vec::new();
        for (key, value) in &records {
            // `<length> <key>=<value>\n`, the length counting itself.
            let body = key.len() + value.len() + 3;
            let mut len = body + 1;
            while len.to_string().len() + body != len {
                len += 1;
            }
            again.extend_from_slice(format!("{len} {key}=").as_bytes());
            again.extend_from_slice(value);
            again.push(b'\n');
        }
        assert_eq!(parse_pax(&again).expect("records written back parse"), records);
    }

    let mut reader = Reader::new(data);
    for _ in 0..4096 {
        match reader.next_member() {
            Ok(Some(member)) => {
                if let Some(sparse) = &member.sparse {
                    let stored: u64 = sparse.segments.iter().map(|(_, len)| len).sum();
                    assert_eq!(stored, member.size);
                    assert!(sparse.segments.iter().all(|(off, len)| off + len <= sparse.real_size));
                }
                let mut sink = Vec::new();
                match reader.data().take(member.size.saturating_add(1)).read_to_end(&mut sink) {
                    Ok(n) => assert_eq!(n as u64, member.size, "a member's data is exactly its size"),
                    Err(_) => return,
                }
            }
            Ok(None) => {
                assert!(matches!(reader.next_member(), Ok(None)), "the end stays the end");
                return;
            }
            Err(_) => return,
        }
    }
});
