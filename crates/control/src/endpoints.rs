//! Where a caller may aim the platform's outbound requests (pushes by WHIP, pulls by WHEP):
//! the operator's exact allow-list, and which addresses a connection may reach. Pure: the
//! control plane checks a URL against the list before it asks a host, and the host
//! resolves the name, checks the addresses and connects to the one it checked.
//!
//! - A URL is parsed and normalised (WHATWG: `..`, `%2e%2e` and `.` segments resolved),
//!   then compared with each entry exactly: scheme, host and port equal, and the path
//!   inside the entry's path at a segment boundary (`/whip` admits `/whip` and `/whip/x`,
//!   not `/whipx`). No user info, no fragment.
//! - A name must resolve to public addresses only: loopback, private, link-local (cloud
//!   metadata at 169.254.169.254 included), shared (100.64/10), unique-local, multicast and
//!   unspecified addresses are refused — unless the operator's entry names that address
//!   itself (`http://10.0.0.5:8080/whip`), which is how an operator allows one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Longest URL a caller may give.
pub const MAX_URL_LEN: usize = 512;

/// One endpoint the operator allows, as given in `push_allowed`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedEndpoint {
    scheme: String,
    host: Host<String>,
    port: u16,
    /// Normalised, without a trailing `/` (empty: the whole server).
    path: String,
}

/// The operator's allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<AllowedEndpoint>,
}

/// A URL that passed the allow-list: what to connect to and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: Host<String>,
    pub port: u16,
    /// The normalised path and query, as sent.
    pub path_and_query: String,
}

impl Endpoint {
    /// `host:port` for the `Host` header.
    pub fn authority(&self) -> String {
        match &self.host {
            Host::Ipv6(ip) => format!("[{ip}]:{}", self.port),
            host => format!("{host}:{}", self.port),
        }
    }

    /// The address itself when the URL names one rather than a name.
    pub fn named_address(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ipv4(ip) => Some(ip.into()),
            Host::Ipv6(ip) => Some(ip.into()),
            Host::Domain(_) => None,
        }
    }
}

/// Parses `url` as an endpoint URL: `http://` only for now (a TLS endpoint needs the
/// system's roots), no user info or fragment, at most [`MAX_URL_LEN`] bytes.
pub fn parse(url: &str) -> Result<Endpoint, String> {
    if url.len() > MAX_URL_LEN || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("an endpoint URL is at most {MAX_URL_LEN} visible characters"));
    }
    let parsed = Url::parse(url).map_err(|_| "not a URL".to_string())?;
    if parsed.scheme() != "http" {
        return Err("endpoints are http:// URLs (put TLS in a proxy in front)".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.fragment().is_some() {
        return Err("an endpoint URL has no user name, password or fragment".into());
    }
    let host = parsed.host().ok_or("an endpoint URL names a host")?.to_owned();
    let port = parsed.port_or_known_default().ok_or("an endpoint URL names a port")?;
    let mut path_and_query = parsed.path().to_string();
    if let Some(query) = parsed.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Ok(Endpoint { host, port, path_and_query })
}

impl AllowList {
    /// The list from the operator's entries; a malformed entry is an error naming it.
    pub fn new(entries: &[String]) -> Result<AllowList, String> {
        let entries = entries
            .iter()
            .map(|entry| {
                let endpoint = parse(entry).map_err(|e| format!("push_allowed {entry:?}: {e}"))?;
                if endpoint.path_and_query.contains('?') {
                    return Err(format!("push_allowed {entry:?}: an entry has no query"));
                }
                Ok(AllowedEndpoint {
                    scheme: "http".into(),
                    host: endpoint.host,
                    port: endpoint.port,
                    path: endpoint.path_and_query.trim_end_matches('/').to_string(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(AllowList { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The endpoint `url` names, if an entry allows it exactly.
    pub fn check(&self, url: &str) -> Result<Endpoint, Refused> {
        let endpoint = parse(url).map_err(Refused::Malformed)?;
        let path = endpoint.path_and_query.split('?').next().unwrap_or_default();
        let allowed = self.entries.iter().any(|entry| {
            entry.host == endpoint.host
                && entry.port == endpoint.port
                && (path == entry.path
                    || path.strip_prefix(entry.path.as_str()).is_some_and(|rest| rest.starts_with('/')))
        });
        if allowed { Ok(endpoint) } else { Err(Refused::NotAllowed) }
    }
}

/// Why an endpoint URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Malformed(String),
    NotAllowed,
}

/// Whether a connection may go to `ip` without the operator naming it: a public unicast
/// address (IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => public_v4(v4),
            None => public_v6(ip),
        },
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64 of any IPv4, private included
}

/// Of the addresses `name` resolved to, the one to connect to: every one of them must be
/// public (a name that also resolves to a private address is refused whole, so the answer
/// cannot be switched between check and connect — the caller connects to this one).
pub fn choose_address(resolved: &[IpAddr]) -> Result<IpAddr, String> {
    if resolved.is_empty() {
        return Err("the endpoint's name does not resolve".into());
    }
    if let Some(private) = resolved.iter().find(|ip| !is_public(**ip)) {
        return Err(format!(
            "the endpoint's name resolves to {}, which is not a public address (name the address in push_allowed to allow it)",
            if private.is_loopback() { "a loopback address" } else { "a private or reserved address" }
        ));
    }
    Ok(resolved[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::new(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn only_the_exact_scheme_host_port_and_path_are_allowed() {
        let allowed = list(&["http://127.0.0.1:8080/whip/", "http://cdn.example/ingest"]);
        for url in [
            "http://127.0.0.1:8080/whip/abc",
            "http://127.0.0.1:8080/whip",
            "http://127.0.0.1:8080/whip/a/b?x=1",
            "http://cdn.example/ingest/key",
            "http://CDN.example:80/ingest",
            "http://127.0.0.1:8080/whip/a/../b",
        ] {
            assert!(allowed.check(url).is_ok(), "{url}");
        }
        for url in [
            "http://127.0.0.123:8080/whip/abc", // another host with the prefix's text
            "http://127.0.0.1:80800/whip/abc",  // not a port
            "http://127.0.0.1:8081/whip/abc",   // another port
            "http://127.0.0.1:8080/whipx",      // not at a segment boundary
            "http://127.0.0.1:8080/whip/../../admin/secret",
            "http://127.0.0.1:8080/whip/%2e%2e/%2E%2E/admin",
            "http://127.0.0.1:8080/whip/%2e%2e",
            "http://127.0.0.1:8080@evil.example/whip/x",
            "http://user:pw@127.0.0.1:8080/whip/x",
            "http://127.0.0.1:8080/whip/x#frag",
            "https://127.0.0.1:8080/whip/x",
            "http://cdn.example.evil.example/ingest",
            "http://169.254.169.254/latest/meta-data",
            "ftp://cdn.example/ingest",
            "http://127.0.0.1:8080/whip/\nx",
            "not a url",
        ] {
            assert!(allowed.check(url).is_err(), "{url}");
        }
        let normalised = allowed.check("http://127.0.0.1:8080/whip/a/./b/../c").unwrap();
        assert_eq!(normalised.path_and_query, "/whip/a/c", "what is sent is what was checked");
        assert!(list(&[]).check("http://127.0.0.1:8080/whip").is_err(), "nothing by default");
    }

    #[test]
    fn malformed_entries_are_refused_at_start_up() {
        for entry in
            ["127.0.0.1:8080", "https://cdn.example/whip", "http://cdn.example/whip?key=1", "http://"]
        {
            assert!(AllowList::new(&[entry.to_string()]).is_err(), "{entry}");
        }
    }

    #[test]
    fn private_and_reserved_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn a_name_with_any_private_answer_is_refused() {
        let public: IpAddr = "1.1.1.1".parse().unwrap();
        assert_eq!(choose_address(&[public]), Ok(public));
        assert!(choose_address(&[public, "127.0.0.1".parse().unwrap()]).is_err());
        assert!(choose_address(&["169.254.169.254".parse().unwrap()]).is_err());
        assert!(choose_address(&[]).is_err());
    }
}
