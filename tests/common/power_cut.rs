//! What a power-cut test knows of one ID, to judge what survived the cut.

/// Every write tried on one ID (`None` a DEL), in order, and how many of them were
/// acknowledged durable.
#[derive(Default, Debug)]
pub struct History {
    pub writes: Vec<Option<Vec<u8>>>,
    pub acked: usize,
}

impl History {
    /// The values the ID may hold after the cut: the state after any write from the last
    /// acknowledged one on (state 0 is "absent").
    pub fn allowed(&self) -> Vec<Option<&[u8]>> {
        let states: Vec<Option<&[u8]>> =
            std::iter::once(None).chain(self.writes.iter().map(|w| w.as_deref())).collect();
        states[self.acked..].to_vec()
    }
}
