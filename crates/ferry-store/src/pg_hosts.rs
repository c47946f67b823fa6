//! A PostgreSQL URL naming several hosts, libpq's way — `postgres://u@A:5432,B:5433/db`
//! or `?host=/run/a,/run/b&port=5432,5433` — with `target_session_attrs=read-write`:
//! sqlx (0.8) connects to one host only, so the store splits such a URL into one URL per
//! host, in order, and keeps to the one that is writable (`pg_failover`).

use crate::StoreError;

/// The single-host URLs of `url`, in its order (one for a plain URL).
/// `target_session_attrs` is taken out: the store always needs a writable primary, so
/// only `read-write` (or `primary`) is accepted and every host is checked for it.
pub fn split_hosts(url: &str) -> Result<Vec<String>, StoreError> {
    let bad = |why: String| StoreError::BadRequest(format!("PostgreSQL URL: {why}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme".into()))?;
    // The first "://" may sit in the query of a URL without one: only these two schemes.
    if !matches!(scheme, "postgres" | "postgresql") {
        return Err(bad("it must start with postgres:// or postgresql://".into()));
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, q),
        None => (tail, ""),
    };
    let authority_lists_hosts = hostlist.contains(',');
    let mut query_hosts: Option<Vec<&str>> = None;
    let mut query_ports: Option<Vec<&str>> = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "target_session_attrs" => match value {
                "read-write" | "primary" => {}
                other => {
                    return Err(bad(format!(
                        "target_session_attrs={other} is not supported: a ferry server writes, so it always \
                         connects to a writable primary (read-write)"
                    )))
                }
            },
            // One host= or several: with hosts before the path too, it is a contradiction.
            "host" if value.contains(',') || authority_lists_hosts => {
                query_hosts = Some(value.split(',').collect());
            }
            "port" if value.contains(',') => query_ports = Some(value.split(',').collect()),
            _ => kept.push(pair),
        }
    }
    let build = |authority_host: &str, host_param: Option<&str>, port_param: Option<&str>| {
        let mut params = kept.clone();
        let host = host_param.map(|h| format!("host={h}"));
        let port = port_param.map(|p| format!("port={p}"));
        params.extend(host.as_deref());
        params.extend(port.as_deref());
        let query = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
        format!("{scheme}://{userinfo}{authority_host}{path}{query}")
    };
    let authority_hosts: Vec<&str> = hostlist.split(',').collect();
    if authority_hosts.iter().any(|h| h.is_empty()) && authority_hosts.len() > 1 {
        return Err(bad("an empty host in the host list".into()));
    }
    match (authority_hosts.len() > 1, query_hosts) {
        (true, Some(_)) => Err(bad("hosts listed both before the path and in host=: use one".into())),
        (true, None) => {
            if query_ports.is_some() {
                return Err(bad("with hosts listed as HOST:PORT,HOST:PORT, leave out port=".into()));
            }
            Ok(authority_hosts.iter().map(|h| build(h, None, None)).collect())
        }
        (false, Some(hosts)) => {
            let ports = match query_ports {
                None => vec![None; hosts.len()],
                Some(p) if p.len() == hosts.len() => p.into_iter().map(Some).collect(),
                Some(p) => return Err(bad(format!("{} hosts but {} ports in port=", hosts.len(), p.len()))),
            };
            if hosts.iter().any(|h| h.is_empty()) {
                return Err(bad("an empty host in host=".into()));
            }
            Ok(hosts.iter().zip(ports).map(|(h, p)| build(hostlist, Some(h), p)).collect())
        }
        (false, None) => {
            if query_ports.is_some() {
                return Err(bad("several ports in port= but one host".into()));
            }
            Ok(vec![build(hostlist, None, None)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_hosts;

    #[test]
    fn one_url_per_host_in_order() {
        let one = |u: &str| split_hosts(u).unwrap();
        assert_eq!(one("postgres://u:p@db/ferry"), ["postgres://u:p@db/ferry"]);
        assert_eq!(
            one("postgres://u:p@a:5432,b:5433/ferry?sslmode=require&target_session_attrs=read-write"),
            ["postgres://u:p@a:5432/ferry?sslmode=require", "postgres://u:p@b:5433/ferry?sslmode=require"]
        );
        assert_eq!(
            one("postgres://u@localhost/postgres?host=/run/a,/run/b&port=5432,5433&target_session_attrs=primary"),
            [
                "postgres://u@localhost/postgres?host=/run/a&port=5432",
                "postgres://u@localhost/postgres?host=/run/b&port=5433"
            ]
        );
        assert_eq!(
            one("postgres://u@localhost:5432/db?host=/run/a,/run/b"),
            ["postgres://u@localhost:5432/db?host=/run/a", "postgres://u@localhost:5432/db?host=/run/b"]
        );
        assert_eq!(one("postgresql://h"), ["postgresql://h"]);
    }

    #[test]
    fn contradictions_are_refused_with_the_fix() {
        for (url, says) in [
            ("postgres://a,b/db?target_session_attrs=any", "read-write"),
            ("postgres://a,,b/db", "empty host"),
            ("postgres://a,b/db?host=/x,/y", "use one"),
            ("postgres://a,b/db?host=/x", "use one"),
            ("postgres://u@l/db?host=/x,/y&port=1,2,3", "2 hosts but 3 ports"),
            ("postgres://a:1,b:2/db?port=1,2", "leave out port="),
            ("nothing", "no scheme"),
            ("postgres:x/db?target_session_attrs=any://h", "must start with postgres://"),
        ] {
            let e = split_hosts(url).expect_err(url).to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
