//! Atomic batches across replication: a MULTI/EXEC transaction larger than one
//! replication chunk reaches a follower whole, and EXEC's reply waits for the follower
//! the tolerance asks for, as a SET's `OK` does.

mod common;

use std::path::Path;

use common::{DEADLINE, LineClient, ServerProcess, poll_until};
use tempfile::TempDir;

fn start_leader(data: &Path) -> ServerProcess {
    ServerProcess::start(data, &["--tolerance", "1", "--ack-timeout", "30s", "--stats-interval", "0s"])
}

fn start_follower(data: &Path, leader: &ServerProcess) -> ServerProcess {
    let leader = leader.grpc.to_string();
    ServerProcess::start(data, &["--follow", &leader, "--stats-interval", "0s"])
}

#[test]
fn a_transaction_larger_than_a_replication_chunk_reaches_the_follower_whole() {
    let tmp = TempDir::new().unwrap();
    let leader = start_leader(&tmp.path().join("leader"));
    let follower = start_follower(&tmp.path().join("follower"), &leader);
    poll_until("the follower to connect", || {
        let mut client = LineClient::connect(leader.addr).ok()?;
        let stats = String::from_utf8(client.request(b"STATS").ok()?).ok()?;
        stats.contains(" followers=1").then_some(())
    });

    let client = redis::Client::open(format!("redis://{}/", leader.addr)).unwrap();
    let mut con = client.get_connection_with_timeout(DEADLINE).unwrap();
    con.set_read_timeout(Some(DEADLINE)).unwrap();
    // 24 messages of 100 KiB: 2.4 MiB, more than two 1 MiB replication chunks.
    let mut transaction = redis::pipe();
    transaction.atomic();
    for i in 0..24 {
        transaction.set(format!("big{i}"), vec![b'a' + i as u8; 100 * 1024]).ignore();
    }
    let () = transaction.query(&mut con).expect("EXEC, acknowledged by the follower");

    // Tolerance 1: the reply came after the follower held the whole batch.
    let follower_client = redis::Client::open(format!("redis://{}/", follower.addr)).unwrap();
    let mut on_follower = follower_client.get_connection_with_timeout(DEADLINE).unwrap();
    for i in 0..24u8 {
        let message: Vec<u8> = redis::cmd("GET").arg(format!("big{i}")).query(&mut on_follower).unwrap();
        assert_eq!(message, vec![b'a' + i; 100 * 1024], "big{i} on the follower");
    }
}
