//! The messages of proto/replication.proto that hand-made replication callers send and read,
//! mirrored with prost's derives (the generated types are private to the crate). Only the
//! fields the tests use: prost skips the others when decoding.

#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchRequest {
    #[prost(string, tag = "1")]
    pub follower_id: String,
    #[prost(uint64, tag = "2")]
    pub next_offset: u64,
    #[prost(bool, tag = "4")]
    pub follow: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchResponse {
    #[prost(oneof = "Kind", tags = "1, 2")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(message, tag = "1")]
    Hello(Hello),
    #[prost(message, tag = "2")]
    Records(Records),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    #[prost(uint64, tag = "4")]
    pub next_offset: u64,
    #[prost(bytes = "vec", tag = "6")]
    pub session: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Records {
    #[prost(bytes = "vec", tag = "1")]
    pub frames: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub leader_next_offset: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    #[prost(string, tag = "1")]
    pub follower_id: String,
    #[prost(uint64, tag = "2")]
    pub durable_offset: u64,
    #[prost(bytes = "vec", tag = "3")]
    pub session: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AckSummary {}

/// proto/quorum.proto's `ProposeRequest`: a serde_json `MetaCommand`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProposeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub command: Vec<u8>,
}

/// proto/quorum.proto's `ProposeReply`, its outcome left undecoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProposeReply {}
