//! The cluster file: who the members are and where each listens.
//!
//! ```toml
//! [[node]]
//! id = 1
//! chat_addr = "127.0.0.1:7001"
//! http_addr = "127.0.0.1:7101"
//! raft_addr = "127.0.0.1:7201"
//! data_dir = "./cluster/node-1"
//! grpc_addr = "127.0.0.1:7301"   # optional
//! ```
//!
//! One `[[node]]` table per voter. Ids are non-zero and distinct, and so is every address;
//! relative data directories are relative to the working directory, as in the node's config.
//! A member without `grpc_addr` serves gRPC on a free port of its chat address's host (members
//! sharing a machine would otherwise all take the default port), unless `--grpc-addr` says.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One member, as the cluster file names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Raft id (non-zero).
    pub id: u64,
    /// Where clients connect (binary and JSON protocols).
    pub chat_addr: SocketAddr,
    /// `/stats` and `/metrics`.
    pub http_addr: SocketAddr,
    /// Where the other members send raft messages.
    pub raft_addr: SocketAddr,
    /// The member's data directory.
    pub data_dir: PathBuf,
    /// gRPC (absent: a free port on the chat address's host, printed on the listening line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<SocketAddr>,
}

impl Member {
    /// Every address the member listens on.
    fn addrs(&self) -> Vec<SocketAddr> {
        let mut addrs = vec![self.chat_addr, self.http_addr, self.raft_addr];
        addrs.extend(self.grpc_addr);
        addrs
    }
}

/// Every member of a cluster, and which one this process is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// This member's id.
    pub id: u64,
    /// Every member, this one included, by id.
    pub members: Vec<Member>,
    /// This member joins a running cluster (`serve --join`): it starts with no configuration
    /// and learns the voters from the leader's snapshot, instead of taking the members listed
    /// here as the initial voters.
    pub join: bool,
    /// A node started without `--cluster`: the one member of its own cluster, with no raft
    /// port (it has no peers to hear from; its `raft_addr` is unused) and no membership
    /// changes.
    pub standalone: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    node: Vec<Member>,
}

impl Cluster {
    /// Reads the cluster file at `path` as member `id`.
    pub fn from_file(path: &Path, id: u64) -> Result<Cluster, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read cluster file {}: {e}", path.display()))?;
        let file: ClusterFile = toml::from_str(&text)
            .map_err(|e| format!("invalid cluster file {}: {e}", path.display()))?;
        Cluster::new(id, file.node).map_err(|e| format!("cluster file {}: {e}", path.display()))
    }

    /// A cluster of `members`, as member `id`; checks ids and addresses.
    pub fn new(id: u64, mut members: Vec<Member>) -> Result<Cluster, String> {
        if members.is_empty() {
            return Err("no [[node]] table: a cluster has at least one member".into());
        }
        members.sort_by_key(|m| m.id);
        for (i, member) in members.iter().enumerate() {
            if member.id == 0 {
                return Err("member id 0 is not allowed (ids start at 1)".into());
            }
            for other in &members[i + 1..] {
                if other.id == member.id {
                    return Err(format!("member id {} appears twice", member.id));
                }
                let theirs = other.addrs();
                if let Some(addr) = member.addrs().iter().find(|a| theirs.contains(a)) {
                    return Err(format!(
                        "members {} and {} both use {addr}",
                        member.id, other.id
                    ));
                }
                if member.data_dir == other.data_dir {
                    return Err(format!(
                        "members {} and {} share the data directory {}",
                        member.id,
                        other.id,
                        member.data_dir.display()
                    ));
                }
            }
            let own = member.addrs();
            if (1..own.len()).any(|i| own[..i].contains(&own[i])) {
                return Err(format!("member {} uses one address twice", member.id));
            }
        }
        if !members.iter().any(|m| m.id == id) {
            let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
            return Err(format!(
                "no member with id {id} (the members are {})",
                ids.join(", ")
            ));
        }
        Ok(Cluster {
            id,
            members,
            join: false,
            standalone: false,
        })
    }

    /// The one-member cluster of a node started without `--cluster` (member 1, with the node's
    /// own addresses and data directory; see [`Cluster::standalone`]).
    pub fn single(chat_addr: SocketAddr, http_addr: SocketAddr, data_dir: &Path) -> Cluster {
        Cluster {
            id: 1,
            members: vec![Member {
                id: 1,
                chat_addr,
                http_addr,
                raft_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                data_dir: data_dir.to_path_buf(),
                grpc_addr: None,
            }],
            join: false,
            standalone: true,
        }
    }

    /// The voters a fresh raft log starts with: every member listed, or none when joining (the
    /// leader's snapshot then tells the configuration). An existing log keeps its own.
    pub fn initial_voters(&self) -> Vec<u64> {
        if self.join {
            Vec::new()
        } else {
            self.members.iter().map(|m| m.id).collect()
        }
    }

    /// This member.
    pub fn me(&self) -> &Member {
        self.member(self.id).expect("checked in Cluster::new")
    }

    /// The member with `id`.
    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The cluster file's text for these members.
    pub fn to_toml(&self) -> String {
        toml::to_string(&ClusterFile {
            node: self.members.clone(),
        })
        .expect("members encode")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64) -> Member {
        Member {
            id,
            chat_addr: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
            http_addr: format!("127.0.0.1:{}", 7100 + id).parse().unwrap(),
            raft_addr: format!("127.0.0.1:{}", 7200 + id).parse().unwrap(),
            data_dir: format!("cluster/node-{id}").into(),
            grpc_addr: None,
        }
    }

    #[test]
    fn a_written_file_reads_back() {
        let cluster = Cluster::new(2, (1..=5).map(member).collect()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, cluster.to_toml()).unwrap();
        let read = Cluster::from_file(&path, 2).unwrap();
        assert_eq!(read, cluster);
        assert_eq!(read.me().chat_addr, member(2).chat_addr);
    }

    #[test]
    fn a_grpc_address_is_optional_kept_when_given_and_checked_for_clashes() {
        let mut with_grpc = member(2);
        with_grpc.grpc_addr = Some("127.0.0.1:7302".parse().unwrap());
        let cluster = Cluster::new(2, vec![member(1), with_grpc.clone()]).unwrap();
        let text = cluster.to_toml();
        // Written only where given: the first member's table has no grpc_addr line.
        assert_eq!(text.matches("grpc_addr").count(), 1, "{text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, text).unwrap();
        let read = Cluster::from_file(&path, 2).unwrap();
        assert_eq!(read.me().grpc_addr, with_grpc.grpc_addr);
        assert_eq!(read.member(1).unwrap().grpc_addr, None);

        let mut clash = member(1);
        clash.grpc_addr = Some(with_grpc.raft_addr);
        let error = Cluster::new(1, vec![clash, with_grpc.clone()]).unwrap_err();
        assert!(error.contains("both use 127.0.0.1:7202"), "{error}");
        let mut own = member(3);
        own.grpc_addr = Some(own.chat_addr);
        let error = Cluster::new(3, vec![own]).unwrap_err();
        assert!(error.contains("member 3 uses one address twice"), "{error}");
    }

    #[test]
    fn a_single_node_is_member_1_and_its_only_voter() {
        let one = member(1);
        let single = Cluster::single(one.chat_addr, one.http_addr, &one.data_dir);
        assert!(single.standalone && !single.join);
        assert_eq!(single.initial_voters(), vec![1]);
        assert_eq!(single.me().chat_addr, one.chat_addr);
        assert_eq!(single.me().data_dir, one.data_dir);
    }

    #[test]
    fn a_joining_member_starts_with_no_voters() {
        let mut cluster = Cluster::new(3, (1..=3).map(member).collect()).unwrap();
        assert_eq!(cluster.initial_voters(), vec![1, 2, 3]);
        cluster.join = true;
        assert!(cluster.initial_voters().is_empty());
    }

    #[test]
    fn mistakes_are_named() {
        let error = Cluster::new(9, vec![member(1), member(2)]).unwrap_err();
        assert!(error.contains("no member with id 9"), "{error}");
        let error = Cluster::new(1, vec![member(1), member(1)]).unwrap_err();
        assert!(error.contains("appears twice"), "{error}");
        let mut clash = member(2);
        clash.raft_addr = member(1).chat_addr;
        let error = Cluster::new(1, vec![member(1), clash]).unwrap_err();
        assert!(error.contains("both use 127.0.0.1:7001"), "{error}");
        assert!(
            Cluster::new(1, vec![])
                .unwrap_err()
                .contains("at least one")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, "[[node]]\nid = 1\nchat = \"x\"\n").unwrap();
        let error = Cluster::from_file(&path, 1).unwrap_err();
        assert!(error.contains("invalid cluster file"), "{error}");
    }
}
