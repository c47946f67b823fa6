//! `ferry_image::unpack::unpack`: a node image's tar stream unpacked into a root
//! directory (a node's tmpfs), as the agent does after decrypting the sealed root and
//! `ferry image verify` does on the server. The image comes from an admin's tar, so a
//! hostile or broken one must fail cleanly and never write outside the root: not with
//! `..`, absolute paths, symbolic links (also to directories, then used as a parent),
//! hard links to outside, or device nodes.
//!
//! Each input is unpacked into `DIR/root`, next to an empty `DIR/outside` and a file
//! `DIR/sentinel`; afterwards `DIR` holds exactly those three, `outside` is still empty
//! and `sentinel` unchanged. Run as root to cover owners and device nodes (`mknod`);
//! attributes the file system refuses are counted (`XattrPolicy::Lenient`). As another
//! user, directories an input makes unsearchable may outlive their temp dir.
#![no_main]

use ferry_image::unpack::{unpack, UnpackOptions, XattrPolicy};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::path::Path;

const SENTINEL: &[u8] = b"outside the image root\n";

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let (root, outside, sentinel) = (dir.path().join("root"), dir.path().join("outside"), dir.path().join("sentinel"));
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(&sentinel, SENTINEL).unwrap();
    let mut opts = UnpackOptions { xattrs: XattrPolicy::Lenient, after_first: None };
    let _ = unpack(data, &root, &mut opts);
    let expected: BTreeSet<String> = ["outside", "root", "sentinel"].into_iter().map(String::from).collect();
    assert_eq!(names(dir.path()), expected, "an entry was made beside the root");
    assert!(names(&outside).is_empty(), "an entry was made outside the root");
    assert_eq!(std::fs::read(&sentinel).unwrap(), SENTINEL, "a file outside the root changed");
});
