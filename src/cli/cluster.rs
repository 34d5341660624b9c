//! `msglog cluster status`: every member of a cluster-mode deployment in one table, from the
//! STATS of the node asked and of each member it lists.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::server::Password;

/// A member that takes longer than this to connect or answer is shown as unreachable, so
/// one hung node does not hold up the picture of the others.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// Print every member (alive or not): its state, epoch, record and ID counts, lag and
    /// whether it is in the ISR, under the cluster's id, controller, leader, epoch and HW.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Client address of any member; the others are found from its STATS.
    #[arg(long, env = "MSGLOG_ADDR", default_value = "127.0.0.1:6666")]
    addr: String,
    /// The nodes' password (their --requirepass); prefer the environment variable, as a
    /// flag shows in `ps`.
    #[arg(long, env = "MSGLOG_PASSWORD", hide_env_values = true, value_parser = super::password::PasswordParser)]
    password: Option<Password>,
    /// Speak TLS to client ports started with --tls-cert; needs --cacert.
    #[arg(long, requires = "cacert")]
    tls: bool,
    /// The CA certificate (PEM) that signed the nodes' certificates, for --tls.
    #[arg(long, env = "MSGLOG_TLS_CA", value_name = "PEM")]
    cacert: Option<std::path::PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// One node's STATS reply, key by key.
pub(crate) type Stats = BTreeMap<String, String>;

/// A member as the node asked lists it, with its own STATS if it answered.
#[derive(Debug, Clone)]
pub(crate) struct MemberAnswer {
    pub(crate) id: String,
    pub(crate) client_addr: String,
    pub(crate) stats: Option<Stats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ClusterStatus {
    /// The node whose view the cluster-wide fields are: the leader if it answered, else the
    /// node asked.
    pub(crate) seen_by: String,
    pub(crate) cluster: String,
    pub(crate) controller: Option<String>,
    pub(crate) leader: Option<String>,
    pub(crate) epoch: Option<u64>,
    pub(crate) hw: Option<u64>,
    pub(crate) isr: Vec<String>,
    pub(crate) min_insync: Option<u64>,
    pub(crate) members: Vec<MemberStatus>,
    /// With several partitions: each one's leader, epoch, ISR and replicas (the header's
    /// leader, epoch, HW and ISR are then partition 0's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PartitionStatus {
    pub(crate) partition: u32,
    pub(crate) leader: Option<String>,
    pub(crate) epoch: Option<u64>,
    pub(crate) isr: Vec<String>,
    pub(crate) replicas: Vec<String>,
}

/// STATS `partition.<p>=leader:<id|none>,epoch:<n>,isr:<a+b>,replicas:<a+b>`, in
/// partition order; none with one partition.
fn partitions(stats: &Stats) -> Vec<PartitionStatus> {
    let mut found: Vec<PartitionStatus> = stats
        .iter()
        .filter_map(|(key, value)| {
            let partition = key.strip_prefix("partition.")?.parse().ok()?;
            let field = |name: &str| value.split(',').find_map(|part| part.strip_prefix(name)?.strip_prefix(':'));
            let ids = |name: &str| -> Vec<String> {
                field(name)
                    .map_or_else(Vec::new, |v| v.split('+').filter(|s| !s.is_empty()).map(str::to_string).collect())
            };
            Some(PartitionStatus {
                partition,
                leader: field("leader").filter(|l| *l != "none").map(str::to_string),
                epoch: field("epoch").and_then(|e| e.parse().ok()),
                isr: ids("isr"),
                replicas: ids("replicas"),
            })
        })
        .collect();
    found.sort_by_key(|p| p.partition);
    found
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct MemberStatus {
    pub(crate) id: String,
    pub(crate) addr: String,
    pub(crate) state: MemberState,
    pub(crate) epoch: Option<u64>,
    pub(crate) records: Option<u64>,
    pub(crate) ids: Option<u64>,
    /// Records behind the leader: as the leader counts unacknowledged records when it
    /// reports this member, else as the member itself last saw; none for the leader.
    pub(crate) lag: Option<u64>,
    pub(crate) in_isr: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum MemberState {
    Leader,
    Follower,
    /// Alive, but holds no copy of the partition (not among its replicas): it forwards,
    /// and is what `--replace-dead-after` draws on.
    Spare,
    Fenced,
    Unreachable,
}

impl MemberState {
    fn as_str(self) -> &'static str {
        match self {
            MemberState::Leader => "leader",
            MemberState::Follower => "follower",
            MemberState::Spare => "spare",
            MemberState::Fenced => "fenced",
            MemberState::Unreachable => "unreachable",
        }
    }
}

pub(crate) fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ClusterCommand::Status(args) => status(args),
    }
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let password = args.password.as_ref();
    let cacert = args.cacert.as_deref().filter(|_| args.tls);
    let asked =
        fetch_stats(&args.addr, password, cacert).with_context(|| format!("cannot get STATS from {}", args.addr))?;
    if !asked.contains_key("cluster") {
        bail!("{} is a standalone node (not started with --cluster)", args.addr);
    }
    let asked_id = asked.get("node_id").cloned().unwrap_or_default();
    let mut listed = members(&asked);
    if !listed.iter().any(|(id, _)| *id == asked_id) {
        // A forming cluster lists no members yet; the node asked is one all the same.
        listed.insert(0, (asked_id.clone(), args.addr.clone()));
    }
    // In parallel, so unreachable members cost one timeout in all rather than one each.
    let answers: Vec<MemberAnswer> = std::thread::scope(|scope| {
        let visits: Vec<_> = listed
            .into_iter()
            .map(|(id, client_addr)| {
                let known = (id == asked_id).then(|| asked.clone());
                scope.spawn(move || {
                    let stats = known.or_else(|| fetch_stats(&client_addr, password, cacert).ok());
                    MemberAnswer { id, client_addr, stats }
                })
            })
            .collect();
        visits.into_iter().map(|visit| visit.join().expect("a member visit panicked")).collect()
    });
    let status = ClusterStatus::from_stats(&asked, &answers);
    let out = if args.json { status.to_json() } else { status.to_text() };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err).context("writing to stdout"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// STATS of the node at `addr` (after AUTH when a password is given).
fn fetch_stats(addr: &str, password: Option<&Password>, cacert: Option<&std::path::Path>) -> anyhow::Result<Stats> {
    let mut stream = Err(anyhow::anyhow!("{addr} resolves to no address"));
    let plain = match cacert {
        Some(ca) => {
            stream = crate::tls::connect_client_port(addr, ca);
            Vec::new()
        }
        None => addr.to_socket_addrs().with_context(|| format!("resolving {addr}"))?.collect(),
    };
    for socket_addr in plain {
        stream =
            TcpStream::connect_timeout(&socket_addr, MEMBER_TIMEOUT).with_context(|| format!("connecting to {addr}"));
        if stream.is_ok() {
            break;
        }
    }
    let stream = stream?;
    stream.set_read_timeout(Some(MEMBER_TIMEOUT)).context("setting a read timeout")?;
    stream.set_write_timeout(Some(MEMBER_TIMEOUT)).context("setting a write timeout")?;
    let mut reader = BufReader::new(&stream);
    if let Some(password) = password {
        let reply = request(&stream, &mut reader, &format!("AUTH {}", password.reveal())).context("AUTH")?;
        if reply != "OK" {
            bail!("AUTH failed: {reply}");
        }
    }
    let reply = request(&stream, &mut reader, "STATS").context("STATS")?;
    if reply.starts_with("ERR") {
        bail!("STATS failed: {reply}");
    }
    Ok(parse_stats(&reply))
}

fn request(mut stream: &TcpStream, reader: &mut impl BufRead, line: &str) -> anyhow::Result<String> {
    stream.write_all(format!("{line}\n").as_bytes()).context("sending")?;
    let mut reply = String::new();
    if reader.read_line(&mut reply).context("reading the reply")? == 0 {
        bail!("the node closed the connection without replying");
    }
    Ok(reply.trim_end_matches(['\r', '\n']).to_string())
}

/// `key=value` pairs separated by spaces; anything else on the line is not STATS's.
pub(crate) fn parse_stats(line: &str) -> Stats {
    line.split(' ').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `members=n0@127.0.0.1:7000,n1@...` as (id, client address) pairs. An address holds no
/// `@`, so the last one separates them.
pub(crate) fn members(stats: &Stats) -> Vec<(String, String)> {
    list(stats, "members")
        .into_iter()
        .filter_map(|member| member.rsplit_once('@').map(|(id, addr)| (id.to_string(), addr.to_string())))
        .collect()
}

/// A comma-separated value as its items (none when empty or missing).
fn list(stats: &Stats, key: &str) -> Vec<String> {
    stats.get(key).map_or_else(Vec::new, |v| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
}

fn number(stats: &Stats, key: &str) -> Option<u64> {
    stats.get(key).and_then(|v| v.parse().ok())
}

/// The leader a node names, `self` read as its own id and `none` as none.
fn named_leader(stats: &Stats) -> Option<String> {
    match stats.get("leader").map(String::as_str) {
        None | Some("none") => None,
        Some("self") => stats.get("node_id").cloned(),
        Some(id) => Some(id.to_string()),
    }
}

/// `follower.<id>=acked:<offset|none>,lag:<records>[,disconnected]` → the lag.
fn lag_reported_by_leader(leader: &Stats, id: &str) -> Option<u64> {
    let value = leader.get(&format!("follower.{id}"))?;
    value.split(',').find_map(|part| part.strip_prefix("lag:")).and_then(|lag| lag.parse().ok())
}

impl ClusterStatus {
    /// The status from the STATS of the node asked and the answers of the members it lists.
    pub(crate) fn from_stats(asked: &Stats, answers: &[MemberAnswer]) -> ClusterStatus {
        let leader_id = named_leader(asked);
        // The leader's view is the freshest on the HW and the ISR, so it wins when it has one.
        let leader_stats = leader_id
            .as_ref()
            .and_then(|id| answers.iter().find(|a| a.id == *id))
            .and_then(|a| a.stats.as_ref())
            .filter(|s| s.get("role").map(String::as_str) == Some("leader"));
        let view = leader_stats.unwrap_or(asked);
        let isr = list(view, "isr");
        let fenced = list(view, "fenced");
        let replicas = list(view, "replicas");
        let partitions = partitions(view);
        let members = answers
            .iter()
            .map(|answer| {
                let own = answer.stats.as_ref();
                let own_number = |key| own.and_then(|s| number(s, key));
                let state = if fenced.contains(&answer.id) {
                    MemberState::Fenced
                } else {
                    match own.and_then(|s| s.get("role")).map(String::as_str) {
                        None => MemberState::Unreachable,
                        // Several partitions: a leader of any, a replica of any, or neither.
                        Some(_) if !partitions.is_empty() => {
                            if partitions.iter().any(|p| p.leader.as_ref() == Some(&answer.id)) {
                                MemberState::Leader
                            } else if partitions.iter().any(|p| p.replicas.contains(&answer.id)) {
                                MemberState::Follower
                            } else {
                                MemberState::Spare
                            }
                        }
                        Some("leader") => MemberState::Leader,
                        Some(_) if !replicas.is_empty() && !replicas.contains(&answer.id) => MemberState::Spare,
                        Some(_) => MemberState::Follower,
                    }
                };
                let lag = match state {
                    // A spare copies nothing, so it lags nothing (its figures are what it
                    // held when it was last a replica, if ever).
                    MemberState::Leader | MemberState::Spare => None,
                    _ => leader_stats.and_then(|l| lag_reported_by_leader(l, &answer.id)).or_else(|| own_number("lag")),
                };
                MemberStatus {
                    id: answer.id.clone(),
                    addr: answer.client_addr.clone(),
                    state,
                    epoch: own_number("epoch"),
                    records: own_number("records"),
                    ids: own_number("ids"),
                    lag,
                    in_isr: match partitions.is_empty() {
                        true => isr.contains(&answer.id),
                        // In the ISR of every partition it holds a copy of.
                        false => {
                            let held = partitions.iter().filter(|p| p.replicas.contains(&answer.id));
                            held.clone().count() > 0 && held.into_iter().all(|p| p.isr.contains(&answer.id))
                        }
                    },
                }
            })
            .collect();
        ClusterStatus {
            seen_by: view.get("node_id").cloned().unwrap_or_default(),
            cluster: view.get("cluster").cloned().unwrap_or_else(|| "forming".to_string()),
            controller: view.get("controller").filter(|c| *c != "none").cloned(),
            leader: named_leader(view),
            epoch: number(view, "epoch"),
            // With no leader nobody vouches for a high watermark: a node's own is stale.
            hw: named_leader(view).and_then(|_| number(view, "hw")),
            isr,
            min_insync: number(view, "min_insync"),
            members,
            partitions,
        }
    }

    pub(crate) fn to_json(&self) -> String {
        let mut json = serde_json::to_string(self).expect("plain data serializes");
        json.push('\n');
        json
    }

    /// A header line, then one aligned row per member; `-` where a figure is unknown.
    pub(crate) fn to_text(&self) -> String {
        let or_dash = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let mut out = format!(
            "cluster {}  controller {}  leader {}  epoch {}  hw {}  isr {}  min-insync {}  (seen by {})\n",
            self.cluster,
            self.controller.as_deref().unwrap_or("none"),
            self.leader.as_deref().unwrap_or("none"),
            or_dash(self.epoch),
            or_dash(self.hw),
            if self.isr.is_empty() { "-".to_string() } else { self.isr.join(",") },
            or_dash(self.min_insync),
            self.seen_by,
        );
        let mut rows = vec![["ID", "ADDRESS", "STATE", "EPOCH", "RECORDS", "IDS", "LAG", "ISR"].map(str::to_string)];
        for m in &self.members {
            rows.push([
                m.id.clone(),
                m.addr.clone(),
                m.state.as_str().to_string(),
                or_dash(m.epoch),
                or_dash(m.records),
                or_dash(m.ids),
                or_dash(m.lag),
                if m.in_isr { "yes" } else { "no" }.to_string(),
            ]);
        }
        aligned(&mut out, &rows);
        if !self.partitions.is_empty() {
            let mut rows = vec![["PARTITION", "LEADER", "EPOCH", "ISR", "REPLICAS"].map(str::to_string)];
            for p in &self.partitions {
                rows.push([
                    p.partition.to_string(),
                    p.leader.clone().unwrap_or_else(|| "none".to_string()),
                    or_dash(p.epoch),
                    if p.isr.is_empty() { "-".to_string() } else { p.isr.join(",") },
                    p.replicas.join(","),
                ]);
            }
            out.push('\n');
            aligned(&mut out, &rows);
        }
        out
    }
}

/// `rows` as lines of left-aligned columns two spaces apart.
fn aligned<const N: usize>(out: &mut String, rows: &[[String; N]]) {
    let widths: Vec<usize> = (0..N).map(|c| rows.iter().map(|row| row[c].len()).max().unwrap_or(0)).collect();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER: &str = "role=leader node_id=n1 records=42 ids=10 last_offset=41 epoch=3 cluster=c7 controller=n0 \
        leader=self hw=40 isr=n0,n1 min_insync=2 replicas=n0,n1,n2,n3 \
        members=n0@127.0.0.1:7000,n1@127.0.0.1:7001,n2@127.0.0.1:7002,n3@127.0.0.1:7003 fenced=n2 followers=1 \
        follower.n0=acked:39,lag:2 follower.n3=acked:none,lag:42,disconnected";
    const FOLLOWER: &str = "role=follower node_id=n0 records=41 ids=10 last_offset=40 epoch=3 cluster=c7 \
        controller=n0 leader=n1 hw=38 isr=n0,n1 min_insync=2 replicas=n0,n1,n2,n3 \
        members=n0@127.0.0.1:7000,n1@127.0.0.1:7001,n2@127.0.0.1:7002,n3@127.0.0.1:7003 fenced=n2 \
        leader_connected=true lag=1";

    /// Asked n0 (a follower); n1 leads, n2 is fenced and down, n3 does not answer.
    fn cluster_asked_at_follower() -> ClusterStatus {
        let asked = parse_stats(FOLLOWER);
        let answers: Vec<MemberAnswer> = members(&asked)
            .into_iter()
            .map(|(id, client_addr)| {
                let stats = match id.as_str() {
                    "n0" => Some(asked.clone()),
                    "n1" => Some(parse_stats(LEADER)),
                    _ => None,
                };
                MemberAnswer { id, client_addr, stats }
            })
            .collect();
        ClusterStatus::from_stats(&asked, &answers)
    }

    #[test]
    fn every_member_gets_a_row_with_its_state_counts_lag_and_isr_membership() {
        let status = cluster_asked_at_follower();
        let row = |id: &str| status.members.iter().find(|m| m.id == id).unwrap().clone();
        assert_eq!(status.members.len(), 4);
        let n0 = row("n0");
        assert_eq!((n0.state, n0.addr.as_str()), (MemberState::Follower, "127.0.0.1:7000"));
        // The leader's count of unacknowledged records, not the follower's own older one.
        assert_eq!((n0.epoch, n0.records, n0.ids, n0.lag, n0.in_isr), (Some(3), Some(41), Some(10), Some(2), true));
        let n1 = row("n1");
        assert_eq!((n1.state, n1.records, n1.lag, n1.in_isr), (MemberState::Leader, Some(42), None, true));
        let n2 = row("n2");
        assert_eq!((n2.state, n2.records, n2.lag, n2.in_isr), (MemberState::Fenced, None, None, false));
        let n3 = row("n3");
        // Down, yet its lag is known: the leader still reports it.
        assert_eq!((n3.state, n3.records, n3.lag, n3.in_isr), (MemberState::Unreachable, None, Some(42), false));
    }

    #[test]
    fn a_live_member_that_is_no_replica_is_a_spare_with_no_lag() {
        let leader = LEADER.replace("replicas=n0,n1,n2,n3", "replicas=n0,n1,n2");
        let spare = FOLLOWER.replace("node_id=n0", "node_id=n3").replace("lag=1", "lag=600");
        let asked = parse_stats(&leader);
        let answers: Vec<MemberAnswer> = members(&asked)
            .into_iter()
            .map(|(id, client_addr)| {
                let stats = match id.as_str() {
                    "n1" => Some(asked.clone()),
                    "n3" => Some(parse_stats(&spare)),
                    _ => None,
                };
                MemberAnswer { id, client_addr, stats }
            })
            .collect();
        let status = ClusterStatus::from_stats(&asked, &answers);
        let n3 = status.members.iter().find(|m| m.id == "n3").unwrap();
        assert_eq!((n3.state, n3.lag, n3.in_isr), (MemberState::Spare, None, false));
        assert!(status.to_text().contains("n3  127.0.0.1:7003  spare"), "{}", status.to_text());
    }

    #[test]
    fn with_no_leader_known_the_header_shows_no_high_watermark() {
        let asked = parse_stats(&FOLLOWER.replace("leader=n1", "leader=none"));
        let status = ClusterStatus::from_stats(&asked, &[]);
        assert_eq!((status.leader.clone(), status.hw), (None, None));
    }

    #[test]
    fn without_the_leader_the_header_is_the_asked_nodes_view_and_lag_its_own() {
        let asked = parse_stats(FOLLOWER);
        let answers = vec![
            MemberAnswer { id: "n0".into(), client_addr: "127.0.0.1:7000".into(), stats: Some(asked.clone()) },
            MemberAnswer { id: "n1".into(), client_addr: "127.0.0.1:7001".into(), stats: None },
        ];
        let status = ClusterStatus::from_stats(&asked, &answers);
        assert_eq!((status.seen_by.as_str(), status.hw, status.leader.as_deref()), ("n0", Some(38), Some("n1")));
        assert_eq!(status.members[0].lag, Some(1));
        assert_eq!(status.members[1].state, MemberState::Unreachable);
    }

    #[test]
    fn text_is_the_leaders_view_in_a_header_and_an_aligned_row_per_member() {
        let text = cluster_asked_at_follower().to_text();
        let expected = "\
cluster c7  controller n0  leader n1  epoch 3  hw 40  isr n0,n1  min-insync 2  (seen by n1)
ID  ADDRESS         STATE        EPOCH  RECORDS  IDS  LAG  ISR
n0  127.0.0.1:7000  follower     3      41       10   2    yes
n1  127.0.0.1:7001  leader       3      42       10   -    yes
n2  127.0.0.1:7002  fenced       -      -        -    -    no
n3  127.0.0.1:7003  unreachable  -      -        -    42   no
";
        assert_eq!(text, expected);
    }

    #[test]
    fn json_is_one_object_with_the_header_fields_and_every_member() {
        let json: serde_json::Value = serde_json::from_str(&cluster_asked_at_follower().to_json()).unwrap();
        assert_eq!(json["cluster"], "c7");
        assert_eq!(json["controller"], "n0");
        assert_eq!(json["leader"], "n1");
        assert_eq!(
            (json["epoch"].as_u64(), json["hw"].as_u64(), json["min_insync"].as_u64()),
            (Some(3), Some(40), Some(2))
        );
        assert_eq!(json["isr"], serde_json::json!(["n0", "n1"]));
        let states: Vec<&str> =
            json["members"].as_array().unwrap().iter().map(|m| m["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["follower", "leader", "fenced", "unreachable"]);
        assert_eq!(json["members"][0]["records"], 41);
        assert_eq!(json["members"][0]["in_isr"], true);
        assert_eq!(json["members"][1]["lag"], serde_json::Value::Null);
    }

    #[test]
    fn a_forming_cluster_has_no_leader_controller_or_members_yet() {
        let asked = parse_stats(
            "role=follower node_id=n0 records=0 ids=0 epoch=0 cluster=forming controller=none leader=none hw=0 \
             isr= min_insync=2 replicas= members= fenced=",
        );
        assert!(members(&asked).is_empty());
        let answers =
            [MemberAnswer { id: "n0".into(), client_addr: "127.0.0.1:7000".into(), stats: Some(asked.clone()) }];
        let status = ClusterStatus::from_stats(&asked, &answers);
        assert_eq!(
            (status.cluster.as_str(), status.controller.clone(), status.leader.clone()),
            ("forming", None, None)
        );
        assert!(status.isr.is_empty());
        assert!(status.to_text().starts_with("cluster forming  controller none  leader none  epoch 0  hw -  isr -  "));
    }

    #[test]
    fn several_partitions_get_a_row_each_and_members_are_judged_over_all_of_them() {
        let node = |id: &str, led: &str| {
            format!(
                "role=follower node_id={id} records=5 ids=5 epoch=2 cluster=c7 controller=a leader={led} isr=a,b \
                 min_insync=2 replicas=a,b partitions=2 members=a@127.0.0.1:7000,b@127.0.0.1:7001,c@127.0.0.1:7002 \
                 fenced= partition.0=leader:a,epoch:2,isr:a+b,replicas:a+b partition.1=leader:c,epoch:4,isr:c,replicas:c+b"
            )
        };
        let asked = parse_stats(&node("b", "a"));
        let answers: Vec<MemberAnswer> = [("a", "127.0.0.1:7000"), ("b", "127.0.0.1:7001"), ("c", "127.0.0.1:7002")]
            .into_iter()
            .map(|(id, addr)| MemberAnswer {
                id: id.to_string(),
                client_addr: addr.to_string(),
                stats: Some(parse_stats(&node(id, "a"))),
            })
            .collect();
        let status = ClusterStatus::from_stats(&asked, &answers);
        assert_eq!(status.partitions.len(), 2);
        assert_eq!(status.partitions[1].leader.as_deref(), Some("c"));
        assert_eq!(status.partitions[1].isr, ["c"]);
        assert_eq!(status.partitions[1].replicas, ["c", "b"]);
        let states: Vec<MemberState> = status.members.iter().map(|m| m.state).collect();
        // b leads nothing but holds copies of both; c leads partition 1 though partition 0's
        // role says follower.
        assert_eq!(states, [MemberState::Leader, MemberState::Follower, MemberState::Leader]);
        let in_isr: Vec<bool> = status.members.iter().map(|m| m.in_isr).collect();
        assert_eq!(in_isr, [true, false, true], "b is out of partition 1's ISR");
        let text = status.to_text();
        assert!(text.contains("PARTITION  LEADER  EPOCH  ISR  REPLICAS\n"), "{text}");
        assert!(text.contains("1          c       4      c    c,b\n"), "{text}");
    }
}
