//! POSIX ACLs in their two archive forms: GNU tar's `--acls` writes the text form
//! (`SCHILY.acl.access`: `user::rw-\nuser:alice:r--\n...`), while the kernel and ferry's
//! archives keep the extended attribute `system.posix_acl_access` (and `_default`)
//! whose value is the kernel's binary form (`linux/posix_acl_xattr.h`: a version word,
//! then `tag, perm, id` entries in the order the kernel checks). This converts text to
//! that binary form, so an imported tar keeps its ACLs however it was made.

use std::collections::BTreeMap;

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

/// User and group names of the image (its own `/etc/passwd` and `/etc/group`), for ACL
/// entries that name them.
#[derive(Debug, Default, Clone)]
pub struct Names {
    pub users: BTreeMap<String, u32>,
    pub groups: BTreeMap<String, u32>,
}

impl Names {
    /// Reads `name:x:id:...` lines (the format of both files).
    pub fn parse_db(text: &str) -> BTreeMap<String, u32> {
        text.lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id = f.nth(1)?.parse().ok()?;
                (!name.is_empty() && !name.starts_with('#')).then(|| (name.to_owned(), id))
            })
            .collect()
    }
}

/// The binary `system.posix_acl_*` value of a text ACL (entries separated by newlines
/// or commas, `#` comments ignored).
pub fn text_to_xattr(text: &str, names: &Names) -> Result<Vec<u8>, String> {
    let mut entries: Vec<(u16, u32, u16)> = Vec::new();
    for raw in text.split(['\n', ',']) {
        let entry = raw.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let mut parts = entry.splitn(3, ':');
        let (tag, qualifier, perms) = match (parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(q), Some(p)) => (t, q, p),
            // `other::r--` and `mask::r--` have an empty qualifier; `o:r--` none at all.
            (Some(t), Some(p), None) => (t, "", p),
            _ => return Err(format!("ACL entry {entry:?} is not tag:qualifier:permissions")),
        };
        let perm = perms_of(perms).ok_or_else(|| format!("ACL entry {entry:?}: {perms:?} is not rwx permissions"))?;
        let id = |db: &BTreeMap<String, u32>, what: &str| -> Result<u32, String> {
            qualifier.parse::<u32>().or_else(|_| {
                db.get(qualifier).copied().ok_or_else(|| {
                    format!(
                        "ACL entry {entry:?} names {what} {qualifier:?}, which the image's /etc/{} does not list \
                         (archive with --numeric-owner, or with --xattrs, which keeps ACLs by number)",
                        if what == "user" { "passwd" } else { "group" }
                    )
                })
            })
        };
        let (tag, id) = match (tag, qualifier.is_empty()) {
            ("user" | "u", true) => (USER_OBJ, UNDEFINED_ID),
            ("user" | "u", false) => (USER, id(&names.users, "user")?),
            ("group" | "g", true) => (GROUP_OBJ, UNDEFINED_ID),
            ("group" | "g", false) => (GROUP, id(&names.groups, "group")?),
            ("mask" | "m", _) => (MASK, UNDEFINED_ID),
            ("other" | "o", _) => (OTHER, UNDEFINED_ID),
            _ => return Err(format!("ACL entry {entry:?} has an unknown tag {tag:?}")),
        };
        entries.push((tag, id, perm));
    }
    if entries.is_empty() {
        return Err("empty ACL".into());
    }
    // The kernel wants them by tag, then by id, each once.
    entries.sort_by_key(|&(tag, id, _)| (tag, id));
    if entries.windows(2).any(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1)) {
        return Err(format!("ACL {text:?} lists an entry twice"));
    }
    let mut out = Vec::with_capacity(4 + 8 * entries.len());
    out.extend_from_slice(&VERSION.to_le_bytes());
    for (tag, id, perm) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

fn perms_of(s: &str) -> Option<u16> {
    let mut perm = 0;
    for c in s.trim().chars() {
        perm |= match c {
            'r' => 4,
            'w' => 2,
            'x' => 1,
            '-' => 0,
            _ => return None,
        };
    }
    Some(perm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `setfacl -m u:1000:r f` gives a 0644 file, as `getfattr -e hex` shows it.
    const KERNEL_FORM: &str =
        "0200000001000600ffffffff02000400e803000004000400ffffffff10000400ffffffff20000400ffffffff";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn gnu_tar_text_becomes_the_kernel_form() {
        let users = Names::parse_db("root:x:0:0:root:/root:/bin/sh\ncloudsdk:x:1000:1000::/home/c:/bin/sh\n");
        let names = Names { users, ..Default::default() };
        let text = "user::rw-\nuser:cloudsdk:r--\ngroup::r--\nmask::r--\nother::r--\n";
        assert_eq!(hex(&text_to_xattr(text, &names).unwrap()), KERNEL_FORM);
        // By number, comma-separated, out of order, with an effective-rights comment.
        let text = "other::r--,mask::r--,u:1000:r-- #effective:r--,group::r--,user::rw-";
        assert_eq!(hex(&text_to_xattr(text, &Names::default()).unwrap()), KERNEL_FORM);
    }

    #[test]
    fn unknown_names_and_malformed_entries_are_errors() {
        let err = text_to_xattr("user::rw-\nuser:alice:r--\n", &Names::default()).unwrap_err();
        assert!(err.contains("\"alice\"") && err.contains("--numeric-owner"), "{err}");
        assert!(text_to_xattr("user::rwz", &Names::default()).is_err());
        assert!(text_to_xattr("robot::rw-", &Names::default()).is_err());
        assert!(text_to_xattr("user::rw-,user::r--", &Names::default()).unwrap_err().contains("twice"));
        assert!(text_to_xattr("", &Names::default()).is_err());
    }
}
