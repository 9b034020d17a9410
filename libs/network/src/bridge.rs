//! What a container on a bridge network outside Kubernetes needs, as
//! `nerdctl run --net bridge -p` gives it: the default bridge network's
//! configuration, published ports parsed from `-p`, and the `/etc/hosts`
//! and `/etc/resolv.conf` of a container with a network of its own.

use std::net::IpAddr;
use std::path::Path;

use berth_errdefs::{Error, Result};
use serde_json::{json, Value};

use crate::cni::PortMapping;

/// The name `berth run --net` uses when given none but `bridge`.
pub const DEFAULT_BRIDGE_NETWORK: &str = "bridge";
/// The Linux bridge of the default network.
pub const DEFAULT_BRIDGE_DEVICE: &str = "berth0";
/// The default network's addresses (docker has 172.17/16, nerdctl 10.4/24,
/// podman 10.88/16: berth keeps clear of all three).
pub const DEFAULT_BRIDGE_SUBNET: &str = "10.87.0.0/16";
/// Docker's fallback when the host names only loopback nameservers, which
/// a container with its own network cannot reach.
const FALLBACK_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// A network list of one Linux bridge (`bridge`, the gateway, masquerading
/// outgoing traffic) with host-local addresses kept in `ipam_dir`, the
/// `portmap` plugin for published ports and `firewall` so that the
/// container's traffic is forwarded even where the FORWARD policy drops it.
pub fn bridge_conflist(name: &str, device: &str, subnet: &str, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": device,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall"}
        ]
    })
}

impl PortMapping {
    /// The ports of one `-p`/`--publish` value, as docker reads it:
    /// `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]`, where both ports
    /// may be ranges of the same length (`8000-8001:80-81`). An IPv6 host
    /// address is bracketed (`[::1]:8080:80`). A container port alone
    /// would need a host port picked at random, which CNI's portmap cannot
    /// do, so it is refused.
    pub fn parse_publish(value: &str) -> Result<Vec<PortMapping>> {
        let invalid = |why: &str| {
            Error::invalid_argument(format!(
                "--publish {value:?}: {why} (expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp|sctp])"
            ))
        };
        let (spec, protocol) = match value.rsplit_once('/') {
            Some((spec, protocol)) => (spec, protocol.to_ascii_lowercase()),
            None => (value, "tcp".to_string()),
        };
        if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
            return Err(invalid("the protocol is tcp, udp or sctp"));
        }
        let (host_ip, ports) = if let Some(rest) = spec.strip_prefix('[') {
            let (ip, ports) = rest
                .split_once("]:")
                .ok_or_else(|| invalid("an unclosed [ around the host address"))?;
            (ip.to_string(), ports)
        } else {
            match spec.matches(':').count() {
                1 => (String::new(), spec),
                2 => {
                    let (ip, ports) = spec.split_once(':').unwrap_or_default();
                    (ip.to_string(), ports)
                }
                0 => return Err(invalid("no host port")),
                _ => return Err(invalid("too many colons")),
            }
        };
        if !host_ip.is_empty() && host_ip.parse::<IpAddr>().is_err() {
            return Err(invalid("the host address is not an IP address"));
        }
        let (host, container) = ports
            .split_once(':')
            .ok_or_else(|| invalid("no host port"))?;
        let host = port_range(host).ok_or_else(|| invalid("the host port is not a port"))?;
        let container =
            port_range(container).ok_or_else(|| invalid("the container port is not a port"))?;
        if host.1 - host.0 != container.1 - container.0 {
            return Err(invalid("the two port ranges differ in length"));
        }
        Ok((0..=host.1 - host.0)
            .map(|offset| PortMapping {
                host_port: host.0 + offset,
                container_port: container.0 + offset,
                protocol: protocol.clone(),
                host_ip: host_ip.clone(),
            })
            .collect())
    }
}

/// `N` or `N-M` (N ≤ M), ports 1 to 65535.
fn port_range(text: &str) -> Option<(u16, u16)> {
    let port = |t: &str| t.parse::<u16>().ok().filter(|p| *p != 0);
    match text.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (port(first)?, port(last)?);
            (first <= last).then_some((first, last))
        }
        None => port(text).map(|p| (p, p)),
    }
}

/// DNS settings a caller gives a container (`--dns`, `--dns-search`,
/// `--dns-option`); whatever is empty comes from the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A `resolv.conf` of `search`, `nameserver` and `options` lines.
pub fn render_resolv_conf(servers: &[String], searches: &[String], options: &[String]) -> String {
    let mut text = String::new();
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    text
}

/// The `resolv.conf` of a container with its own network, from the host's
/// (`host`) and the caller's settings, as docker makes it: the host's
/// loopback nameservers (a local stub resolver such as systemd-resolved's
/// 127.0.0.53) are unreachable from the container's namespace, so they are
/// dropped, and when none is left Google's public servers stand in.
pub fn container_resolv_conf(host: &str, dns: &DnsConfig) -> String {
    let mut servers = dns.servers.clone();
    let mut searches = dns.searches.clone();
    let mut options = dns.options.clone();
    let from_host = |key: &str| -> Vec<String> {
        host.lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(key)).then(|| words.map(str::to_string).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    };
    if servers.is_empty() {
        servers = from_host("nameserver")
            .into_iter()
            .filter(|s| !s.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
            .collect();
        if servers.is_empty() {
            servers = FALLBACK_NAMESERVERS.iter().map(|s| s.to_string()).collect();
        }
    }
    if searches.is_empty() {
        // The last `search` (or `domain`) line wins, as in the resolver.
        searches = host
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                matches!(words.next(), Some("search" | "domain"))
                    .then(|| words.map(str::to_string).collect::<Vec<_>>())
            })
            .next_back()
            .unwrap_or_default();
    }
    if options.is_empty() {
        options = from_host("options");
    }
    render_resolv_conf(&servers, &searches, &options)
}

/// The `/etc/hosts` of a container with its own network: loopback names,
/// its addresses under its hostname, and the caller's `NAME:IP` entries.
pub fn container_hosts(hostname: &str, ips: &[String], extra: &[(String, String)]) -> String {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for ip in ips {
        text.push_str(&format!("{ip}\t{hostname}\n"));
    }
    for (name, ip) in extra {
        text.push_str(&format!("{ip}\t{name}\n"));
    }
    text
}

/// One `--add-host NAME:IP` (the address may be IPv6, so the name ends at
/// the first colon).
pub fn parse_add_host(value: &str) -> Result<(String, String)> {
    let invalid =
        |why: &str| Error::invalid_argument(format!("--add-host {value:?}: {why} (NAME:IP)"));
    let (name, ip) = value.split_once(':').ok_or_else(|| invalid("no address"))?;
    let valid_name = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !valid_name {
        return Err(invalid("the name is not a host name"));
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .map_err(|_| invalid("the address is not an IP address"))?;
    Ok((name.to_string(), ip.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mapping(host_ip: &str, host: u16, container: u16, protocol: &str) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: container,
            protocol: protocol.into(),
            host_ip: host_ip.into(),
        }
    }

    #[test]
    fn publish_values_are_read_as_docker_reads_them() {
        assert_eq!(
            PortMapping::parse_publish("8080:80").unwrap(),
            vec![mapping("", 8080, 80, "tcp")]
        );
        assert_eq!(
            PortMapping::parse_publish("127.0.0.1:8080:80/udp").unwrap(),
            vec![mapping("127.0.0.1", 8080, 80, "udp")]
        );
        assert_eq!(
            PortMapping::parse_publish("[::1]:8080:80/SCTP").unwrap(),
            vec![mapping("::1", 8080, 80, "sctp")]
        );
        assert_eq!(
            PortMapping::parse_publish("8000-8002:90-92").unwrap(),
            vec![
                mapping("", 8000, 90, "tcp"),
                mapping("", 8001, 91, "tcp"),
                mapping("", 8002, 92, "tcp")
            ]
        );
    }

    #[test]
    fn bad_publish_values_say_why() {
        for (value, why) in [
            ("80", "no host port"),
            ("0:80", "host port"),
            ("8080:70000", "container port"),
            ("8080:80/icmp", "protocol"),
            ("nohost:8080:80", "not an IP"),
            ("8000-8001:80", "differ in length"),
            ("8001-8000:80-79", "host port"),
            ("1:2:3:4", "too many colons"),
            ("[::1:8080:80", "unclosed"),
            (":80", "host port"),
        ] {
            let e = PortMapping::parse_publish(value).unwrap_err().to_string();
            assert!(e.contains(why), "{value}: {e}");
        }
    }

    #[test]
    fn loopback_nameservers_are_dropped_and_the_rest_kept() {
        let host = "# by resolvconf\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\nsearch a.example b.example\noptions edns0 trust-ad\n";
        assert_eq!(
            container_resolv_conf(host, &DnsConfig::default()),
            "search a.example b.example\nnameserver 192.0.2.1\noptions edns0 trust-ad\n"
        );
    }

    #[test]
    fn only_loopback_nameservers_fall_back_to_public_ones() {
        let text = container_resolv_conf("nameserver 127.0.0.53\n", &DnsConfig::default());
        assert_eq!(text, "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }

    #[test]
    fn the_callers_dns_settings_replace_the_hosts() {
        let dns = DnsConfig {
            servers: vec!["198.51.100.7".into()],
            searches: vec!["c.example".into()],
            options: vec!["ndots:2".into()],
        };
        let text = container_resolv_conf("nameserver 192.0.2.1\nsearch a.example\n", &dns);
        assert_eq!(
            text,
            "search c.example\nnameserver 198.51.100.7\noptions ndots:2\n"
        );
    }

    #[test]
    fn hosts_name_the_container_and_the_callers_entries() {
        let text = container_hosts(
            "web",
            &["10.87.0.5".into()],
            &[("db".into(), "192.0.2.9".into())],
        );
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(text.contains("\n10.87.0.5\tweb\n"), "{text}");
        assert!(text.ends_with("192.0.2.9\tdb\n"), "{text}");
    }

    #[test]
    fn add_host_values_are_checked() {
        assert_eq!(
            parse_add_host("db:192.0.2.9").unwrap(),
            ("db".to_string(), "192.0.2.9".to_string())
        );
        assert_eq!(parse_add_host("v6:[2001:db8::1]").unwrap().1, "2001:db8::1");
        assert_eq!(
            parse_add_host("my-db.example_1:192.0.2.9").unwrap().0,
            "my-db.example_1"
        );
        assert!(parse_add_host("db").is_err());
        assert!(parse_add_host("d b:192.0.2.9").is_err());
        assert!(parse_add_host("db:nope").is_err());
    }

    #[test]
    fn the_default_bridge_list_parses_and_asks_for_port_mappings() {
        let value = bridge_conflist(
            DEFAULT_BRIDGE_NETWORK,
            DEFAULT_BRIDGE_DEVICE,
            DEFAULT_BRIDGE_SUBNET,
            Path::new("/run/x/ipam"),
        );
        let list = crate::NetworkList::parse(
            &serde_json::to_vec(&value).unwrap(),
            Path::new("b.conflist"),
        )
        .unwrap();
        assert_eq!(list.name, "bridge");
        let kinds: Vec<&str> = list
            .plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["bridge", "portmap", "firewall"]);
        assert_eq!(list.plugins[0]["ipam"]["dataDir"], "/run/x/ipam");
        assert_eq!(list.plugins[1]["capabilities"]["portMappings"], true);
    }
}
