//! Hostlists as HPC tools write them (Slurm, pdsh, Warewulf): `n[001-128]`,
//! `n[1-4,7]`, `gpu[01-02]-ib,login1`. Zero padding follows the width of the range's
//! lower bound, as in Slurm.

use crate::CoreError;

/// The most names one hostlist may produce; larger inputs are almost certainly typos
/// (`n[1-1000000]`) and would otherwise allocate without bound.
pub const MAX_HOSTS: usize = 65_536;

/// The longest entry (between commas) expanded. A name is never longer than the entry
/// that made it, and names are at most 63 characters, so this bounds the memory an
/// expansion takes (65,536 names of a 100 KB prefix would be gigabytes).
pub const MAX_ENTRY_BYTES: usize = 255;

/// Expands a hostlist into names, in order, without duplicates.
pub fn expand(input: &str) -> Result<Vec<String>, CoreError> {
    let err = |reason: &str| CoreError::Hostlist { input: input.to_owned(), reason: reason.to_owned() };
    let mut out: Vec<String> = Vec::new();
    for item in split_top_level(input).map_err(|r| err(&r))? {
        if item.is_empty() {
            return Err(err("empty entry (check for a stray comma)"));
        }
        if item.len() > MAX_ENTRY_BYTES {
            return Err(err(&format!("an entry is longer than {MAX_ENTRY_BYTES} characters")));
        }
        let mut names = vec![String::new()];
        let mut rest = item;
        while !rest.is_empty() {
            match rest.find('[') {
                None => {
                    if rest.contains(']') {
                        return Err(err("']' without '['"));
                    }
                    names.iter_mut().for_each(|n| n.push_str(rest));
                    rest = "";
                }
                Some(open) => {
                    let prefix = &rest[..open];
                    if prefix.contains(']') {
                        return Err(err("']' without '['"));
                    }
                    let close = rest[open..].find(']').ok_or_else(|| err("'[' without ']'"))? + open;
                    let values = expand_ranges(&rest[open + 1..close]).map_err(|r| err(&r))?;
                    if names.len().saturating_mul(values.len()) > MAX_HOSTS {
                        return Err(err(&format!("more than {MAX_HOSTS} names")));
                    }
                    names = names.iter().flat_map(|n| values.iter().map(move |v| format!("{n}{prefix}{v}"))).collect();
                    rest = &rest[close + 1..];
                }
            }
        }
        out.extend(names);
        if out.len() > MAX_HOSTS {
            return Err(err(&format!("more than {MAX_HOSTS} names")));
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|n| seen.insert(n.clone()));
    Ok(out)
}

/// Splits on commas that are not inside brackets.
fn split_top_level(input: &str) -> Result<Vec<&str>, String> {
    let (mut depth, mut start, mut parts) = (0i32, 0usize, Vec::new());
    for (i, c) in input.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(input[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("brackets do not nest".into());
        }
    }
    if input.trim().is_empty() {
        return Err("empty hostlist".into());
    }
    parts.push(input[start..].trim());
    Ok(parts)
}

/// Expands `1-4,7,09-11` into zero-padded strings.
fn expand_ranges(spec: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part.trim(), part.trim()),
        };
        let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) {
            return Err(format!("range {part:?} must be numbers like 1-4 or 001-128"));
        }
        let (a, b): (u32, u32) = (lo.parse().map_err(|_| "bad number")?, hi.parse().map_err(|_| "bad number")?);
        if a > b {
            return Err(format!("range {part:?} runs backwards"));
        }
        if (b - a) as usize >= MAX_HOSTS || out.len() + (b - a) as usize >= MAX_HOSTS {
            return Err(format!("more than {MAX_HOSTS} names"));
        }
        let width = lo.len();
        out.extend((a..=b).map(|v| format!("{v:0width$}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_entries_are_refused_before_expanding() {
        // Cheap first: a 256-byte entry is refused even when it makes only two names.
        let e = expand(&format!("{}[1-2]", "n".repeat(251))).unwrap_err().to_string();
        assert!(e.contains("longer than 255"), "{}", &e[e.len() - 80..]);
        assert_eq!(expand(&format!("{}[1-2]", "n".repeat(250))).unwrap().len(), 2, "255 bytes is fine");
        // What the cap is for: 65,536 names of a 100 KB prefix would be 6.5 GB.
        let huge = format!("{}[1-65536]", "n".repeat(100_000));
        let e = expand(&huge).unwrap_err().to_string();
        assert!(e.contains("longer than 255"), "{}", &e[e.len() - 80..]);
    }

    #[test]
    fn expands_common_forms() {
        assert_eq!(expand("n1").unwrap(), ["n1"]);
        assert_eq!(expand("n[1-4,7]").unwrap(), ["n1", "n2", "n3", "n4", "n7"]);
        let big = expand("n[001-128]").unwrap();
        assert_eq!(big.len(), 128);
        assert_eq!((big[0].as_str(), big[127].as_str()), ("n001", "n128"));
        assert_eq!(expand("gpu[01-02]-ib,login1").unwrap(), ["gpu01-ib", "gpu02-ib", "login1"]);
        assert_eq!(expand("r[1-2]n[1-2]").unwrap(), ["r1n1", "r1n2", "r2n1", "r2n2"]);
        assert_eq!(expand("n[8-11]").unwrap(), ["n8", "n9", "n10", "n11"]);
        assert_eq!(expand("n1, n2 ,n1").unwrap(), ["n1", "n2"]);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            " ",
            "n[",
            "n]",
            "n[1-",
            "n[4-1]",
            "n[a-b]",
            "n[]",
            "n[1-2",
            "n[[1]]",
            "a,,b",
            "n[1-100000]",
            "n[1-300]m[1-300]",
            "n[-3]",
            "n[1--3]",
            "n[9999999999]",
        ] {
            assert!(expand(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_name_the_input() {
        let e = expand("n[4-1]").unwrap_err().to_string();
        assert!(e.contains("n[4-1]") && e.contains("backwards"), "{e}");
    }
}
