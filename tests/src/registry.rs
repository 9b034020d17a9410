//! Debian's `docker-registry` (the reference registry) started on a free
//! loopback port, optionally with htpasswd basic auth.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A registry process; killed (by pid) when dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    pub host: String,
}

/// A free port on 127.0.0.1 (released again; the caller binds it soon).
/// Whether process `pid` holds a socket listening on 127.0.0.1:`port`
/// (found by inode: /proc/net/tcp's listener against the process's fds).
fn listens_on(pid: u32, port: u16) -> bool {
    let wanted = format!("0100007F:{port:04X}");
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    // Columns: sl, local_address, rem_address, st, ..., inode (the tenth).
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 9 && fields[1] == wanted && fields[3] == "0A")
                .then(|| format!("socket:[{}]", fields[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts a registry storing under `dir`; with `user`, only that
    /// `(name, password)` may push or pull (basic auth).
    pub fn start(dir: &Path, user: Option<(&str, &str)>) -> Registry {
        Registry::start_with(dir, user, None)
    }

    /// A registry serving HTTPS with a certificate for 127.0.0.1 made here,
    /// signed by a CA made here (`<dir>/ca.pem`, the CA to trust).
    pub fn start_tls(dir: &Path) -> Registry {
        Registry::start_tls_with(dir, false)
    }

    /// [`Registry::start_tls`], also demanding a client certificate signed
    /// by the same CA (`<dir>/client.cert` and `<dir>/client.key`).
    pub fn start_tls_requiring_client_certificates(dir: &Path) -> Registry {
        Registry::start_tls_with(dir, true)
    }

    fn start_tls_with(dir: &Path, client_certificates: bool) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        // A CA, and a server certificate for 127.0.0.1 signed by it.
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl is installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=berth test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ]);
        let mut tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        );
        if client_certificates {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=berth test client",
                "-keyout",
                "client.key",
                "-out",
                "client.csr",
            ]);
            std::fs::write(
                dir.join("client.ext"),
                "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
            )
            .unwrap();
            openssl(&[
                "x509",
                "-req",
                "-in",
                "client.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "client.ext",
                "-out",
                "client.cert",
            ]);
            tls.push_str(&format!(
                "    clientcas:\n      - {}\n",
                dir.join("ca.pem").display()
            ));
        }
        Registry::start_with(dir, None, Some(tls))
    }

    fn start_with(dir: &Path, user: Option<(&str, &str)>, tls: Option<String>) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let mut auth = String::new();
        if let Some((name, password)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", name, password])
                .output()
                .expect("htpasswd (apache2-utils) is installed");
            std::fs::write(dir.join("htpasswd"), out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        let tls = tls.unwrap_or_default();
        // The port is free when picked, not reserved: another process may
        // take it before the registry binds it, and the registry then
        // exits. Another port, then.
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
                dir.join("data").display(),
            );
            std::fs::write(dir.join("config.yml"), config).unwrap();
            let log = std::fs::File::create(dir.join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(dir.join("config.yml"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("docker-registry is installed");
            let host = format!("127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!(
                        "docker-registry on port {port} exited ({status}): {}",
                        std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
                    );
                    break;
                }
                // Its own listener, not another process's on the port.
                if listens_on(child.id(), port) {
                    return Registry { child, host };
                }
                assert!(Instant::now() < deadline, "docker-registry did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("docker-registry did not start on any of five ports");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
