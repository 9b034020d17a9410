//! Mark and sweep over one consistent picture: metad's roots and what
//! contentd and snapd listed. Pure: no IO, so every rule is unit-tested.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use berth_metadata::{parse_rfc3339, Labels, LABEL_GC_EXPIRE, LABEL_GC_FLAT};

use super::labels::{meaning, Meaning, Target};
use super::roots::{LeaseRoots, NamespaceRoots, Roots};

/// Lease resource kind of a blob.
const CONTENT_KIND: &str = "content";
/// Lease resource kind prefix of a snapshot (`snapshots/overlayfs`).
const SNAPSHOTS_KIND_PREFIX: &str = "snapshots/";

/// What the daemons listed, per namespace.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// contentd's blobs by namespace.
    pub content: BTreeMap<String, Vec<berth_content::Info>>,
    /// snapd's snapshots by (namespace, snapshotter).
    pub snapshots: BTreeMap<(String, String), Vec<berth_snapshot::Info>>,
}

/// A blob to delete, unless it changed since it was listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentGarbage {
    pub namespace: String,
    pub digest: berth_ids::Digest,
    pub seen: SystemTime,
}

/// A snapshot to remove, unless it changed since it was listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotGarbage {
    pub namespace: String,
    pub snapshotter: String,
    pub key: String,
    pub seen: SystemTime,
}

/// What a collection should delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub content: Vec<ContentGarbage>,
    /// Children before their parents (snapd refuses a parent first).
    pub snapshots: Vec<SnapshotGarbage>,
    /// Expired leases, `(namespace, id)`.
    pub expired_leases: Vec<(String, String)>,
}

/// An object of the graph. Namespaces never mix: every edge stays in its
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Node {
    Content {
        namespace: String,
        digest: String,
    },
    Snapshot {
        namespace: String,
        snapshotter: String,
        key: String,
    },
}

impl Node {
    fn content(namespace: &str, digest: &str) -> Node {
        Node::Content {
            namespace: namespace.to_string(),
            digest: digest.to_string(),
        }
    }

    fn snapshot(namespace: &str, snapshotter: &str, key: &str) -> Node {
        Node::Snapshot {
            namespace: namespace.to_string(),
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        }
    }

    fn namespace(&self) -> &str {
        match self {
            Node::Content { namespace, .. } | Node::Snapshot { namespace, .. } => namespace,
        }
    }

    fn label_target(namespace: &str, target: &Target<'_>) -> Node {
        match target {
            Target::Content(digest) => Node::content(namespace, digest),
            Target::Snapshot { snapshotter, key } => Node::snapshot(namespace, snapshotter, key),
        }
    }
}

/// How much of an object is held. A flat lease holds the objects it names
/// (and a snapshot's parents, without which it cannot exist), not what
/// their labels reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Hold {
    Flat,
    Full,
}

/// A listed object, as the graph needs it.
struct Object<'a> {
    labels: &'a Labels,
    /// A snapshot's parent, in its snapshotter.
    parent: Option<&'a str>,
}

/// The graph over everything listed.
struct Graph<'a> {
    objects: HashMap<Node, Object<'a>>,
    /// Objects that live as long as the key does (`gc.bref.*` labels).
    back_refs: HashMap<Node, Vec<Node>>,
}

impl<'a> Graph<'a> {
    fn new(listing: &'a Listing) -> Graph<'a> {
        let mut objects = HashMap::new();
        for (namespace, infos) in &listing.content {
            for info in infos {
                objects.insert(
                    Node::content(namespace, info.digest.as_str()),
                    Object {
                        labels: &info.labels,
                        parent: None,
                    },
                );
            }
        }
        for ((namespace, snapshotter), infos) in &listing.snapshots {
            for info in infos {
                objects.insert(
                    Node::snapshot(namespace, snapshotter, &info.name),
                    Object {
                        labels: &info.labels,
                        parent: info.parent.as_deref(),
                    },
                );
            }
        }
        let mut back_refs: HashMap<Node, Vec<Node>> = HashMap::new();
        for (node, object) in &objects {
            for (key, value) in object.labels {
                if let Meaning::BackRef(target) = meaning(key, value) {
                    back_refs
                        .entry(Node::label_target(node.namespace(), &target))
                        .or_default()
                        .push(node.clone());
                }
            }
        }
        Graph { objects, back_refs }
    }

    /// What holding `node` at `hold` holds next.
    fn edges(&self, node: &Node, hold: Hold, out: &mut Vec<(Node, Hold)>) {
        if hold == Hold::Full {
            for held in self.back_refs.get(node).into_iter().flatten() {
                out.push((held.clone(), Hold::Full));
            }
        }
        let Some(object) = self.objects.get(node) else {
            // Named by a label or a root, but not listed: nothing to follow.
            return;
        };
        if let (
            Node::Snapshot {
                namespace,
                snapshotter,
                ..
            },
            Some(parent),
        ) = (node, object.parent)
        {
            out.push((Node::snapshot(namespace, snapshotter, parent), hold));
        }
        if hold == Hold::Flat {
            return;
        }
        for (key, value) in object.labels {
            if let Meaning::Ref(target) = meaning(key, value) {
                out.push((Node::label_target(node.namespace(), &target), Hold::Full));
            }
        }
    }

    /// Everything reachable from `roots`, with how much of it is held.
    fn mark(&self, roots: Vec<(Node, Hold)>) -> HashMap<Node, Hold> {
        let mut marked: HashMap<Node, Hold> = HashMap::new();
        let mut pending = roots;
        let mut next = Vec::new();
        while let Some((node, hold)) = pending.pop() {
            // Each node is expanded at most twice (flat, then full), so
            // cycles end.
            if marked.get(&node).is_some_and(|had| *had >= hold) {
                continue;
            }
            self.edges(&node, hold, &mut next);
            pending.append(&mut next);
            marked.insert(node, hold);
        }
        marked
    }
}

/// The live leases of a namespace (id → flat), and the expired ones.
fn leases(namespace: &NamespaceRoots, now: SystemTime) -> (HashMap<&str, bool>, Vec<&LeaseRoots>) {
    let mut live = HashMap::new();
    let mut expired = Vec::new();
    for lease in &namespace.leases {
        let expires = lease.labels.get(LABEL_GC_EXPIRE).and_then(|value| {
            parse_rfc3339(value)
                .map_err(|e| {
                    // As containerd: a lease with a bad expiry still holds.
                    tracing::info!(
                        namespace = %namespace.namespace,
                        lease = %lease.id,
                        error = %e,
                        "ignoring the lease's expiry"
                    );
                })
                .ok()
        });
        if expires.is_some_and(|at| at < now) {
            expired.push(lease);
        } else {
            live.insert(lease.id.as_str(), lease.labels.contains_key(LABEL_GC_FLAT));
        }
    }
    (live, expired)
}

/// The roots of the collection: metad's records, and listed objects that
/// hold themselves (`gc.root`, or the label of a live lease).
fn root_set(
    roots: &Roots,
    graph: &Graph<'_>,
    now: SystemTime,
    plan: &mut Plan,
) -> Vec<(Node, Hold)> {
    let mut out = Vec::new();
    let mut live_leases: HashMap<&str, HashMap<&str, bool>> = HashMap::new();
    for namespace in &roots.namespaces {
        let ns = namespace.namespace.as_str();
        for target in &namespace.images {
            out.push((Node::content(ns, target.as_str()), Hold::Full));
        }
        for (snapshotter, key) in &namespace.containers {
            out.push((Node::snapshot(ns, snapshotter, key), Hold::Full));
        }
        let (live, expired) = leases(namespace, now);
        for lease in &namespace.leases {
            let Some(flat) = live.get(lease.id.as_str()) else {
                continue;
            };
            let hold = if *flat { Hold::Flat } else { Hold::Full };
            for resource in &lease.resources {
                if resource.kind == CONTENT_KIND {
                    out.push((Node::content(ns, &resource.id), hold));
                } else if let Some(snapshotter) = resource.kind.strip_prefix(SNAPSHOTS_KIND_PREFIX)
                {
                    out.push((Node::snapshot(ns, snapshotter, &resource.id), hold));
                }
                // Ingests: contentd's ingests are never collected.
            }
        }
        plan.expired_leases.extend(
            expired
                .into_iter()
                .map(|lease| (ns.to_string(), lease.id.clone())),
        );
        live_leases.entry(ns).or_default().extend(live);
    }
    for (node, object) in &graph.objects {
        let live = live_leases.get(node.namespace());
        let mut hold = None;
        for (key, value) in object.labels {
            let this = match meaning(key, value) {
                Meaning::Root => Some(Hold::Full),
                Meaning::Lease(id) => match live.and_then(|leases| leases.get(id)) {
                    Some(true) => Some(Hold::Flat),
                    Some(false) => Some(Hold::Full),
                    None => None,
                },
                _ => None,
            };
            hold = hold.max(this);
        }
        if let Some(hold) = hold {
            out.push((node.clone(), hold));
        }
    }
    out
}

/// Decides what to delete: every listed blob and snapshot that no root
/// reaches, and every expired lease. `now` decides expiry.
pub fn plan(roots: &Roots, listing: &Listing, now: SystemTime) -> Plan {
    let graph = Graph::new(listing);
    let mut plan = Plan::default();
    let marked = graph.mark(root_set(roots, &graph, now, &mut plan));

    for (namespace, infos) in &listing.content {
        for info in infos {
            if !marked.contains_key(&Node::content(namespace, info.digest.as_str())) {
                plan.content.push(ContentGarbage {
                    namespace: namespace.clone(),
                    digest: info.digest.clone(),
                    seen: info.updated_at,
                });
            }
        }
    }
    plan.content
        .sort_by(|a, b| (&a.namespace, &a.digest).cmp(&(&b.namespace, &b.digest)));

    for ((namespace, snapshotter), infos) in &listing.snapshots {
        let garbage: BTreeMap<&str, &berth_snapshot::Info> = infos
            .iter()
            .filter(|info| {
                !marked.contains_key(&Node::snapshot(namespace, snapshotter, &info.name))
            })
            .map(|info| (info.name.as_str(), info))
            .collect();
        for key in children_first(&garbage) {
            plan.snapshots.push(SnapshotGarbage {
                namespace: namespace.clone(),
                snapshotter: snapshotter.clone(),
                key: key.to_string(),
                seen: garbage
                    .get(key)
                    .map_or(SystemTime::UNIX_EPOCH, |i| i.updated_at),
            });
        }
    }
    plan
}

/// The keys of `snapshots` ordered so that no snapshot comes after its
/// parent. (A reachable snapshot's parents are reachable, so garbage never
/// has live children; a parent cycle, which snapd never makes, ends up
/// last in key order.)
fn children_first<'a>(snapshots: &BTreeMap<&'a str, &berth_snapshot::Info>) -> Vec<&'a str> {
    let mut children: HashMap<&str, usize> = HashMap::new();
    for info in snapshots.values() {
        if let Some(parent) = info.parent.as_deref() {
            if snapshots.contains_key(parent) {
                *children.entry(parent).or_default() += 1;
            }
        }
    }
    let mut ready: Vec<&str> = snapshots
        .keys()
        .rev()
        .filter(|key| !children.contains_key(*key))
        .copied()
        .collect();
    let mut order = Vec::with_capacity(snapshots.len());
    let mut done = BTreeSet::new();
    while let Some(key) = ready.pop() {
        order.push(key);
        done.insert(key);
        let parent = snapshots.get(key).and_then(|info| info.parent.as_deref());
        if let Some((parent, count)) =
            parent.and_then(|p| children.get_mut(p).map(|count| (p, count)))
        {
            *count -= 1;
            if *count == 0 {
                if let Some((key, _)) = snapshots.get_key_value(parent) {
                    ready.push(key);
                }
            }
        }
    }
    order.extend(snapshots.keys().filter(|key| !done.contains(*key)));
    order
}

#[cfg(test)]
mod tests;
