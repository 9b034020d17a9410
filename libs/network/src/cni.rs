//! Running CNI plugins: the first network list of a configuration
//! directory (as containerd's CRI picks it: file names in order, `.conflist`,
//! `.conf` or `.json`), each plugin of it in order on ADD and in reverse on
//! DEL, the previous plugin's result passed on, and `portMappings` given to
//! the plugins that declare that capability. A `portmap` with no port to
//! map is not run: it would only pass the result on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_errdefs::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// The longest a plugin may take for one step.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest configuration file read, and the most a plugin may print.
const MAX_CONFIG: u64 = 1 << 20;
/// The interface the pod's network is attached as (as containerd names
/// it).
pub const POD_INTERFACE: &str = "eth0";
/// The PATH plugins run with (they find iptables and friends on it).
pub const PLUGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// CNI plugins and their configuration.
#[derive(Debug, Clone)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

/// One network list: its name, version and plugin configurations.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    /// The file it came from.
    pub source: PathBuf,
}

/// A host port published to a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The pod a network is set up for.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// The sandbox's id (CNI's container id).
    pub id: String,
    pub netns: PathBuf,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub port_mappings: Vec<PortMapping>,
}

/// What setting up a pod's network gave: each network's result, kept so
/// that the teardown can hand it back to the plugins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// (network name, interface, the last plugin's result).
    pub results: Vec<(String, String, Value)>,
}

impl Attachment {
    /// The pod's addresses (without prefix length), the primary first.
    pub fn ips(&self) -> Vec<String> {
        let mut ips = Vec::new();
        for (_, ifname, result) in &self.results {
            if ifname == "lo" {
                continue;
            }
            if let Some(list) = result.get("ips").and_then(Value::as_array) {
                for ip in list {
                    if let Some(address) = ip.get("address").and_then(Value::as_str) {
                        ips.push(address.split('/').next().unwrap_or(address).to_string());
                    }
                }
            }
            // CNI 0.2.0 results.
            for key in ["ip4", "ip6"] {
                if let Some(address) = result
                    .get(key)
                    .and_then(|v| v.get("ip"))
                    .and_then(Value::as_str)
                {
                    ips.push(address.split('/').next().unwrap_or(address).to_string());
                }
            }
        }
        ips
    }
}

impl NetworkList {
    /// Parses a `.conflist`, or a `.conf`/`.json` of one plugin.
    pub fn parse(bytes: &[u8], source: &Path) -> Result<NetworkList> {
        let invalid = |why: String| {
            Error::invalid_argument(format!("CNI configuration {}: {why}", source.display()))
        };
        let value: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no name".into()))?
            .to_string();
        let cni_version = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.3.1")
            .to_string();
        let plugins = match value.get("plugins") {
            Some(Value::Array(plugins)) => plugins.clone(),
            Some(_) => return Err(invalid("plugins is not a list".into())),
            None if value.get("type").is_some() => vec![value.clone()],
            None => return Err(invalid("neither plugins nor type".into())),
        };
        if plugins.is_empty() {
            return Err(invalid("no plugins".into()));
        }
        for plugin in &plugins {
            let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
            if kind.is_empty() || kind.contains('/') || kind.starts_with('.') {
                return Err(invalid(format!(
                    "plugin type {kind:?} is not a plugin name"
                )));
            }
        }
        Ok(NetworkList {
            name,
            cni_version,
            plugins,
            source: source.to_path_buf(),
        })
    }
}

impl Cni {
    /// The network pods are attached to: the first usable file of the
    /// configuration directory; None when it has none (the network is not
    /// ready).
    pub fn network(&self) -> Result<Option<NetworkList>> {
        Ok(self.networks()?.into_iter().next())
    }

    /// The network list called `name`, from the first file that defines
    /// it; None when no file does.
    pub fn network_named(&self, name: &str) -> Result<Option<NetworkList>> {
        Ok(self.networks()?.into_iter().find(|list| list.name == name))
    }

    /// Every usable network list of the configuration directory, in file
    /// name order; files that cannot be read or parsed are skipped (and
    /// logged).
    pub fn networks(&self) -> Result<Vec<NetworkList>> {
        let entries = match std::fs::read_dir(&self.conf_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::io(
                    format!("reading {}", self.conf_dir.display()),
                    &e,
                ))
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        let mut lists = Vec::new();
        for file in files {
            let bytes = match read_bounded(&file) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(file = %file.display(), "skipped: {e}");
                    continue;
                }
            };
            match NetworkList::parse(&bytes, &file) {
                Ok(list) => lists.push(list),
                Err(e) => tracing::warn!(file = %file.display(), "skipped: {e}"),
            }
        }
        Ok(lists)
    }

    /// Whether the plugins a list names are all installed.
    pub fn missing_plugins(&self, list: &NetworkList) -> Vec<String> {
        list.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .filter(|kind| self.plugin(kind).is_none())
            .map(str::to_string)
            .collect()
    }

    fn plugin(&self, kind: &str) -> Option<PathBuf> {
        self.bin_dirs
            .iter()
            .map(|dir| dir.join(kind))
            .find(|path| path.is_file())
    }

    /// Brings up `lo` and attaches the pod to the network, both at once:
    /// they touch different interfaces of the pod's namespace. `lo` is set
    /// up here, not by CNI's `loopback` plugin as containerd's go-cni has
    /// it done: the same interface state, without a process per pod (and
    /// with nothing to undo: a namespace's `lo` goes with it).
    pub async fn setup(&self, pod: &PodNetwork) -> Result<Attachment> {
        let network = self.network()?.ok_or_else(|| {
            Error::failed_precondition(format!(
                "no CNI network configuration in {}",
                self.conf_dir.display()
            ))
        })?;
        let netns = pod.netns.clone();
        let lo = async {
            tokio::task::spawn_blocking(move || crate::netns::bring_up_loopback(&netns))
                .await
                .map_err(|e| Error::internal(format!("the loopback thread: {e}")))?
        };
        let (lo_result, attachment) = tokio::join!(lo, self.attach(&network, pod));
        let attachment = attachment?;
        match lo_result {
            Ok(()) => Ok(attachment),
            Err(e) => {
                let _ = self.detach(&network, pod, Some(&attachment)).await;
                Err(e)
            }
        }
    }

    /// Detaches the pod from the network it was attached to (as recorded),
    /// else from the configured one.
    pub async fn teardown(&self, pod: &PodNetwork, attachment: Option<&Attachment>) -> Result<()> {
        match self.network()? {
            Some(network) => self.detach(&network, pod, attachment).await,
            None => Ok(()),
        }
    }

    /// Attaches `pod` to `network` as its [`POD_INTERFACE`]. A failed ADD
    /// is undone (DEL) before the error is returned, so whatever it made
    /// (an address, a veth, port rules) goes.
    pub async fn attach(&self, network: &NetworkList, pod: &PodNetwork) -> Result<Attachment> {
        match self.add(network, POD_INTERFACE, pod).await {
            Ok(result) => Ok(Attachment {
                results: vec![(network.name.clone(), POD_INTERFACE.into(), result)],
            }),
            Err(e) => {
                let _ = self.del(network, POD_INTERFACE, pod, None).await;
                Err(e)
            }
        }
    }

    /// Detaches `pod` from `network`, handing the plugins the result its
    /// attachment recorded (CNI's prevResult) when there is one. Plugins
    /// tolerate a namespace that is already gone, and a DEL of what was
    /// never (or no longer) attached.
    pub async fn detach(
        &self,
        network: &NetworkList,
        pod: &PodNetwork,
        attachment: Option<&Attachment>,
    ) -> Result<()> {
        let previous = attachment.and_then(|a| {
            a.results
                .iter()
                .find(|(name, ifname, _)| *name == network.name && ifname == POD_INTERFACE)
                .map(|(_, _, result)| result.clone())
        });
        self.del(network, POD_INTERFACE, pod, previous).await
    }

    async fn add(&self, list: &NetworkList, ifname: &str, pod: &PodNetwork) -> Result<Value> {
        let mut previous: Option<Value> = None;
        for plugin in &list.plugins {
            let config = self.plugin_config(list, plugin, pod, previous.take());
            // (A previous result that is no result, as from a plugin that
            // printed nothing, is left for the plugin to refuse.)
            if let (true, Some(result)) = (
                passes_through(&config),
                config.get("prevResult").filter(|r| r.is_object()),
            ) {
                previous = Some(result.clone());
                continue;
            }
            let result = self.exec("ADD", plugin, &config, ifname, pod).await?;
            previous = Some(result);
        }
        Ok(previous.unwrap_or(Value::Null))
    }

    async fn del(
        &self,
        list: &NetworkList,
        ifname: &str,
        pod: &PodNetwork,
        previous: Option<Value>,
    ) -> Result<()> {
        let mut first_error = None;
        for plugin in list.plugins.iter().rev() {
            let config = self.plugin_config(list, plugin, pod, previous.clone());
            if passes_through(&config) {
                continue;
            }
            if let Err(e) = self.exec("DEL", plugin, &config, ifname, pod).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A plugin's stdin: its own configuration with the list's name and
    /// version, the previous result, and the runtime config it asks for.
    fn plugin_config(
        &self,
        list: &NetworkList,
        plugin: &Value,
        pod: &PodNetwork,
        previous: Option<Value>,
    ) -> Value {
        let mut config = plugin.clone();
        if let Some(map) = config.as_object_mut() {
            map.insert("name".into(), json!(list.name));
            map.insert("cniVersion".into(), json!(list.cni_version));
            if let Some(previous) = previous {
                map.insert("prevResult".into(), previous);
            }
            let wants_ports = plugin
                .get("capabilities")
                .and_then(|c| c.get("portMappings"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if wants_ports && !pod.port_mappings.is_empty() {
                map.insert(
                    "runtimeConfig".into(),
                    json!({ "portMappings": pod.port_mappings }),
                );
            }
        }
        config
    }

    async fn exec(
        &self,
        command: &str,
        plugin: &Value,
        config: &Value,
        ifname: &str,
        pod: &PodNetwork,
    ) -> Result<Value> {
        let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
        let binary = self.plugin(kind).ok_or_else(|| {
            Error::failed_precondition(format!(
                "CNI plugin {kind:?} not found in {:?}",
                self.bin_dirs
            ))
        })?;
        let path = std::env::join_paths(&self.bin_dirs)
            .map_err(|e| Error::invalid_argument(format!("CNI bin dirs: {e}")))?;
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.pod_namespace, pod.pod_name, pod.id, pod.pod_uid
        );
        let stdin = serde_json::to_vec(config)
            .map_err(|e| Error::internal(format!("encoding CNI config: {e}")))?;
        let mut child = tokio::process::Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.id)
            .env("CNI_NETNS", &pod.netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", path)
            .env("CNI_ARGS", args)
            .env("PATH", PLUGIN_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("running {}", binary.display()), &e))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(&stdin)
                .await
                .map_err(|e| Error::io(format!("writing to {}", binary.display()), &e))?;
        }
        let output = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| Error::unavailable(format!("CNI plugin {kind} {command}: timed out")))?
            .map_err(|e| Error::io(format!("running {}", binary.display()), &e))?;
        if output.stdout.len() as u64 > MAX_CONFIG {
            return Err(Error::internal(format!(
                "CNI plugin {kind} printed too much"
            )));
        }
        if !output.status.success() {
            let message = serde_json::from_slice::<Value>(&output.stdout)
                .ok()
                .and_then(|v| {
                    let msg = v.get("msg").and_then(Value::as_str)?.to_string();
                    let details = v.get("details").and_then(Value::as_str).unwrap_or("");
                    Some(if details.is_empty() {
                        msg
                    } else {
                        format!("{msg}: {details}")
                    })
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&output.stderr).trim().to_string());
            return Err(Error::internal(format!(
                "CNI plugin {kind} {command} on {ifname}: {message}"
            )));
        }
        if command == "DEL" || output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&output.stdout).map_err(|e| {
            Error::internal(format!(
                "CNI plugin {kind} {command}: its result is not JSON: {e}"
            ))
        })
    }
}

/// Whether a plugin's step, with this configuration, would only hand the
/// previous result on: CNI's `portmap` with no port to map. Its ADD then
/// prints its `prevResult` back (in the list's version, which the plugin
/// before it already answered in) and its DEL and CHECK return at once
/// (containernetworking/plugins, `plugins/meta/portmap`, unchanged from
/// 1.1 to today). Most pods publish no port, and a Go process per pod for
/// nothing is several milliseconds of their start. An ADD with no previous
/// result is run all the same (the plugin refuses it).
fn passes_through(config: &Value) -> bool {
    let no_ports = config
        .get("runtimeConfig")
        .and_then(|c| c.get("portMappings"))
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    config.get("type").and_then(Value::as_str) == Some("portmap") && no_ports
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), &e))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("reading {}", path.display()), &e))?;
    if bytes.len() as u64 > MAX_CONFIG {
        return Err(Error::invalid_argument(format!(
            "{} is larger than {MAX_CONFIG} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_plugin_conf_is_a_list_of_one() {
        let list = NetworkList::parse(
            br#"{"cniVersion":"0.4.0","name":"n","type":"bridge","bridge":"b0"}"#,
            Path::new("x.conf"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(list.name, "n");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0]["bridge"], "b0");
    }

    #[test]
    fn plugin_types_that_are_paths_are_refused() {
        for kind in ["../bin/sh", "/bin/sh", ".hidden", ""] {
            let text = format!(r#"{{"name":"n","plugins":[{{"type":"{kind}"}}]}}"#);
            assert!(
                NetworkList::parse(text.as_bytes(), Path::new("x")).is_err(),
                "{kind}"
            );
        }
    }

    #[test]
    fn the_first_usable_file_in_name_order_is_the_network() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"))
        };
        write("05-broken.conflist", "{not json");
        write(
            "10-b.conflist",
            r#"{"name":"b","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            "20-a.conflist",
            r#"{"name":"a","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            "00-ignored.txt",
            r#"{"name":"t","plugins":[{"type":"bridge"}]}"#,
        );
        let cni = Cni {
            conf_dir: dir.path().to_path_buf(),
            bin_dirs: vec![],
        };
        let list = cni
            .network()
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no network"));
        assert_eq!(list.name, "b");
        assert_eq!(cni.missing_plugins(&list), vec!["bridge".to_string()]);
    }

    #[test]
    fn port_mappings_reach_only_plugins_that_ask() {
        let cni = Cni {
            conf_dir: PathBuf::new(),
            bin_dirs: vec![],
        };
        let list = NetworkList::parse(
            br#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            Path::new("x"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let pod = PodNetwork {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            ..test_pod()
        };
        let bridge = cni.plugin_config(&list, &list.plugins[0], &pod, None);
        assert!(bridge.get("runtimeConfig").is_none());
        assert_eq!(bridge["name"], "n");
        let portmap = cni.plugin_config(&list, &list.plugins[1], &pod, Some(json!({"ips": []})));
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert_eq!(portmap["prevResult"], json!({"ips": []}));
    }

    #[test]
    fn addresses_come_from_the_pod_interface_results() {
        let attachment = Attachment {
            results: vec![
                (
                    "cni-loopback".into(),
                    "lo".into(),
                    json!({"ips":[{"address":"127.0.0.1/8"}]}),
                ),
                (
                    "n".into(),
                    "eth0".into(),
                    json!({"ips":[{"address":"10.88.0.5/16"},{"address":"fd00::5/64"}]}),
                ),
            ],
        };
        assert_eq!(attachment.ips(), vec!["10.88.0.5", "fd00::5"]);
    }

    /// A plugin that logs each call (command, interface, whether it got a
    /// previous result) and fails the command its configuration names.
    const FAKE_PLUGIN: &str = r#"#!/bin/sh
[ "$CNI_COMMAND" = VERSION ] && exit 0
conf=$(cat)
case "$conf" in *'"marker":"lo"'*) prev=prevlo ;; *prevResult*) prev=prev ;; *) prev=noprev ;; esac
echo "$CNI_COMMAND $CNI_IFNAME $prev" >>"$(dirname "$0")/calls"
case "$conf" in *'"fail":"'"$CNI_COMMAND"'"'*) echo '{"code":11,"msg":"told to fail"}'; exit 1 ;; esac
[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.2/24"}]}'
exit 0
"#;

    /// Waits out ETXTBSY: a test thread that forks while this one writes
    /// a script gives its child the script's write descriptor until that
    /// child execs, and executing the script meanwhile fails.
    fn wait_until_executable(path: &Path) {
        for _ in 0..200 {
            match std::process::Command::new(path)
                .env("CNI_COMMAND", "VERSION")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
            {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return,
            }
        }
    }

    /// A CNI setup with the fake plugin as `net`, failing the commands in
    /// `net_fails`; its pod's namespace path names no namespace.
    fn fake_cni(net_fails: &str) -> (tempfile::TempDir, Cni, PodNetwork) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("conf"));
        for d in [&bin, &conf] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
        }
        let path = bin.join("net");
        std::fs::write(&path, FAKE_PLUGIN).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        wait_until_executable(&path);
        std::fs::write(
            conf.join("10-n.conflist"),
            format!(r#"{{"cniVersion":"1.0.0","name":"n","plugins":[{{"type":"net","fail":"{net_fails}"}}]}}"#),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cni = Cni {
            conf_dir: conf,
            bin_dirs: vec![bin],
        };
        let pod = PodNetwork {
            netns: dir.path().join("no-such-netns"),
            ..test_pod()
        };
        (dir, cni, pod)
    }

    fn test_pod() -> PodNetwork {
        PodNetwork {
            id: "p".into(),
            netns: PathBuf::from("/run/netns/p"),
            pod_name: "n".into(),
            pod_namespace: "ns".into(),
            pod_uid: "u".into(),
            port_mappings: vec![],
        }
    }

    fn calls(dir: &tempfile::TempDir) -> Vec<String> {
        let mut calls: Vec<String> = std::fs::read_to_string(dir.path().join("bin/calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        calls.sort();
        calls
    }

    /// Whether a TCP listener on 127.0.0.1 can be made and reached inside
    /// the namespace at `netns`: only with `lo` up.
    fn loopback_works_in(netns: &Path) -> bool {
        crate::netns::in_netns(netns, || {
            let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
                return Ok(false);
            };
            Ok(listener
                .local_addr()
                .and_then(std::net::TcpStream::connect)
                .is_ok())
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn setup_brings_up_lo_and_attaches_the_network() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "needs root (namespaces, mounts)"
            );
            return;
        }
        let (dir, cni, pod) = fake_cni("");
        let netns = crate::netns::create_netns(dir.path(), "pod").unwrap_or_else(|e| panic!("{e}"));
        // Unpinned however the test ends.
        struct Pinned(PathBuf);
        impl Drop for Pinned {
            fn drop(&mut self) {
                let _ = crate::netns::unpin_namespace(&self.0);
            }
        }
        let _pinned = Pinned(netns.clone());
        let pod = PodNetwork { netns, ..pod };
        assert!(
            !loopback_works_in(&pod.netns),
            "a new namespace's lo is down"
        );
        let attachment = cni.setup(&pod).await.unwrap_or_else(|e| panic!("{e}"));
        let interfaces: Vec<&str> = attachment.results.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(interfaces, ["eth0"]);
        assert_eq!(attachment.ips(), ["10.1.0.2"]);
        // No plugin for lo: it is up all the same.
        assert_eq!(calls(&dir), ["ADD eth0 noprev"]);
        assert!(loopback_works_in(&pod.netns));
    }

    #[tokio::test]
    async fn a_failed_setup_detaches_the_network_and_reports_why() {
        // A failed network ADD is deleted without a result; a `lo` that
        // cannot be brought up (here: no namespace at the path) deletes
        // the attached network with its ADD's result, as a teardown would.
        let cases = [
            (
                "ADD",
                "told to fail",
                ["ADD eth0 noprev", "DEL eth0 noprev"],
            ),
            ("", "no-such-netns", ["ADD eth0 noprev", "DEL eth0 prev"]),
        ];
        for (net_fails, why, expected) in cases {
            let (dir, cni, pod) = fake_cni(net_fails);
            let error = cni
                .setup(&pod)
                .await
                .err()
                .unwrap_or_else(|| panic!("setup succeeded"));
            assert!(error.to_string().contains(why), "{error}");
            assert_eq!(calls(&dir), expected, "the network fails: {net_fails:?}");
        }
    }

    /// A plugin `name` in `cni`'s first bin dir running `script`.
    fn write_plugin(cni: &Cni, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = cni.bin_dirs[0].join(name);
        std::fs::write(&path, script).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        wait_until_executable(&path);
    }

    fn one_plugin_list(kind: &str) -> NetworkList {
        NetworkList {
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![json!({ "type": kind })],
            source: PathBuf::new(),
        }
    }

    #[test]
    fn a_document_without_plugins_or_type_is_refused() {
        let e = NetworkList::parse(br#"{"name":"n","cniVersion":"1.0.0"}"#, Path::new("x"))
            .err()
            .unwrap_or_else(|| panic!("parsed"));
        assert!(e.to_string().contains("neither plugins nor type"), "{e}");
    }

    #[test]
    fn networks_are_found_by_name_and_a_missing_directory_has_none() {
        let (_dir, cni, _) = fake_cni("");
        std::fs::write(
            cni.conf_dir.join("20-other.conflist"),
            r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"net","fail":"x"}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let found = cni.network_named("other").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            found.map(|l| l.plugins[0]["fail"].clone()),
            Some(json!("x"))
        );
        assert_eq!(
            cni.network_named("n")
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|l| l.name),
            Some("n".into())
        );
        assert!(cni
            .network_named("none")
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());

        let missing = Cni {
            conf_dir: cni.conf_dir.join("no-such-dir"),
            bin_dirs: cni.bin_dirs.clone(),
        };
        assert!(missing
            .networks()
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty());
        let not_a_directory = Cni {
            conf_dir: cni.conf_dir.join("20-other.conflist"),
            bin_dirs: cni.bin_dirs.clone(),
        };
        assert!(
            not_a_directory.networks().is_err(),
            "a file as the directory"
        );
    }

    #[tokio::test]
    async fn teardown_and_detach_hand_back_the_networks_own_result() {
        let (dir, cni, pod) = fake_cni("");
        cni.teardown(&pod, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(calls(&dir), ["DEL eth0 noprev"]);
        std::fs::remove_file(dir.path().join("bin/calls")).unwrap_or_else(|e| panic!("{e}"));
        // The loopback's result comes first and has the network's name;
        // only the entry of the network's interface is its result.
        let attachment = Attachment {
            results: vec![
                ("n".into(), "lo".into(), json!({"marker": "lo"})),
                ("n".into(), POD_INTERFACE.into(), json!({"marker": "eth"})),
            ],
        };
        let network = cni
            .network()
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no network"));
        cni.detach(&network, &pod, Some(&attachment))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(calls(&dir), ["DEL eth0 prev"]);
    }

    #[tokio::test]
    async fn a_plugin_may_print_nothing_but_not_more_than_the_limit() {
        let (_dir, cni, pod) = fake_cni("");
        write_plugin(&cni, "quiet", "#!/bin/sh\ncat >/dev/null\necho\n");
        let result = cni
            .attach(&one_plugin_list("quiet"), &pod)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(result.results[0].2, Value::Null, "an empty ADD result");
        // DEL's output is not read, whatever it is.
        write_plugin(
            &cni,
            "chatty",
            "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = DEL ] && echo not-json\nexit 0\n",
        );
        cni.detach(&one_plugin_list("chatty"), &pod, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Exactly the limit of output (spaces) is taken; one byte more is not.
        for (name, bytes, accepted) in [("full", MAX_CONFIG, true), ("over", MAX_CONFIG + 1, false)]
        {
            write_plugin(
                &cni,
                name,
                &format!("#!/bin/sh\ncat >/dev/null\nhead -c {bytes} /dev/zero | tr '\\0' ' '\n"),
            );
            let result = cni.attach(&one_plugin_list(name), &pod).await;
            assert_eq!(result.is_ok(), accepted, "{bytes} bytes: {result:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains("printed too much"), "{e}");
            }
        }
    }

    #[tokio::test]
    async fn portmap_runs_only_with_ports_to_map() {
        let (dir, cni, pod) = fake_cni("");
        // A stand-in for CNI's portmap: it logs its calls and answers an
        // address of its own, so a result that went through it shows.
        write_plugin(
            &cni,
            "portmap",
            r#"#!/bin/sh
[ "$CNI_COMMAND" = VERSION ] && exit 0
conf=$(cat)
case "$conf" in *hostPort*) ports=ports ;; *) ports=noports ;; esac
echo "portmap $CNI_COMMAND $ports" >>"$(dirname "$0")/calls"
[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.0.0","ips":[{"address":"10.9.9.9/24"}]}'
exit 0
"#,
        );
        let list = NetworkList {
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![
                json!({"type": "net"}),
                json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            ],
            source: PathBuf::new(),
        };
        let attached = cni
            .attach(&list, &pod)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(attached.ips(), ["10.1.0.2"], "net's result, passed on");
        cni.detach(&list, &pod, Some(&attached))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(calls(&dir), ["ADD eth0 noprev", "DEL eth0 prev"]);

        std::fs::remove_file(dir.path().join("bin/calls")).unwrap_or_else(|e| panic!("{e}"));
        let published = PodNetwork {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            ..pod
        };
        let attached = cni
            .attach(&list, &published)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(attached.ips(), ["10.9.9.9"], "portmap's result");
        cni.detach(&list, &published, Some(&attached))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            calls(&dir),
            [
                "ADD eth0 noprev",
                "DEL eth0 prev",
                "portmap ADD ports",
                "portmap DEL ports"
            ]
        );

        // A portmap first in its list has no result to pass on: it runs
        // (and the real one refuses that).
        std::fs::remove_file(dir.path().join("bin/calls")).unwrap_or_else(|e| panic!("{e}"));
        let alone = NetworkList {
            plugins: vec![list.plugins[1].clone()],
            ..list
        };
        let unpublished = PodNetwork {
            port_mappings: vec![],
            ..published
        };
        cni.attach(&alone, &unpublished)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(calls(&dir), ["portmap ADD noports"]);
        // Nor is there one after a plugin that printed nothing.
        std::fs::remove_file(dir.path().join("bin/calls")).unwrap_or_else(|e| panic!("{e}"));
        write_plugin(&cni, "quiet", "#!/bin/sh\ncat >/dev/null\necho\n");
        let after_quiet = NetworkList {
            plugins: vec![json!({"type": "quiet"}), alone.plugins[0].clone()],
            ..alone
        };
        cni.attach(&after_quiet, &unpublished)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(calls(&dir), ["portmap ADD noports"]);
    }

    #[test]
    fn configuration_files_are_read_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let full = dir.path().join("full");
        std::fs::write(&full, vec![b' '; MAX_CONFIG as usize]).unwrap_or_else(|e| panic!("{e}"));
        let read = read_bounded(&full).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.len() as u64, MAX_CONFIG);
        let over = dir.path().join("over");
        std::fs::write(&over, vec![b' '; MAX_CONFIG as usize + 1])
            .unwrap_or_else(|e| panic!("{e}"));
        let e = read_bounded(&over).err().unwrap_or_else(|| panic!("read"));
        assert!(e.to_string().contains("larger than"), "{e}");
    }
}
