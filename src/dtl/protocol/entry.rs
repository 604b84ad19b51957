//! DTL entries: [`Entry`] (a logged write or record, tagged with its SCO), its encoding
//! (the same bytes on the wire and on disk), and the checks and decoders of encoded
//! entries ([`check_entry`] reads an entry's header without copying its payload).

use super::{Cursor, ProtoError, BLOCK, DATA_HEADER, ENTRY_HEADER, KIND_DATA, KIND_RECORD, MAX_DATA};

/// What an entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryBody {
    /// Cluster data written by the guest: `index` is its slot inside the SCO, `cluster`
    /// the volume cluster number.
    Data { index: u32, cluster: u64, data: Vec<u8> },
    /// Opaque metadata (a TLog record such as a discard or a snapshot marker).
    Record(Vec<u8>),
}

/// One logged write or record, tagged with the SCO (epoch) it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sco: u64,
    pub body: EntryBody,
}

impl Entry {
    pub fn data(sco: u64, index: u32, cluster: u64, data: Vec<u8>) -> Entry {
        Entry { sco, body: EntryBody::Data { index, cluster, data } }
    }

    pub fn record(sco: u64, bytes: Vec<u8>) -> Entry {
        Entry { sco, body: EntryBody::Record(bytes) }
    }

    fn payload_len(&self) -> usize {
        match &self.body {
            EntryBody::Data { data, .. } => DATA_HEADER + data.len(),
            EntryBody::Record(r) => r.len(),
        }
    }

    /// Bytes of this entry on the wire and on disk.
    pub fn encoded_len(&self) -> usize {
        ENTRY_HEADER + self.payload_len()
    }

    /// Whether the entry respects the limits (checked before it is queued).
    pub fn validate(&self) -> Result<(), ProtoError> {
        match &self.body {
            EntryBody::Data { data, .. } => check_data_len(data.len()),
            EntryBody::Record(r) if r.len() > MAX_DATA => {
                Err(ProtoError::Malformed(format!("record of {} bytes (max {MAX_DATA})", r.len())))
            }
            EntryBody::Record(_) => Ok(()),
        }
    }

    /// Append the encoding of this entry with sequence number `seq` to `out`.
    pub fn encode(&self, seq: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&self.sco.to_le_bytes());
        match &self.body {
            EntryBody::Data { index, cluster, data } => {
                out.push(KIND_DATA);
                out.extend_from_slice(&(self.payload_len() as u32).to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&cluster.to_le_bytes());
                out.extend_from_slice(data);
            }
            EntryBody::Record(r) => {
                out.push(KIND_RECORD);
                out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                out.extend_from_slice(r);
            }
        }
    }
}

fn check_data_len(n: usize) -> Result<(), ProtoError> {
    if n == 0 || !n.is_multiple_of(BLOCK) || n > MAX_DATA {
        return Err(ProtoError::Malformed(format!(
            "data of {n} bytes (must be a non-empty multiple of {BLOCK}, at most {MAX_DATA})"
        )));
    }
    Ok(())
}

/// The fixed part of an encoded entry, read without copying its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHead {
    pub seq: u64,
    pub sco: u64,
    /// Encoded length of the whole entry.
    pub len: usize,
}

/// Check the entry at the start of `buf`: structure and limits. Returns its header.
pub fn check_entry(buf: &[u8]) -> Result<EntryHead, ProtoError> {
    let mut c = Cursor::new(buf);
    let seq = c.u64()?;
    let sco = c.u64()?;
    let kind = c.u8()?;
    let plen = c.u32()? as usize;
    match kind {
        KIND_DATA => {
            if plen < DATA_HEADER {
                return Err(ProtoError::Malformed(format!("data entry payload of {plen} bytes")));
            }
            check_data_len(plen - DATA_HEADER)?;
        }
        KIND_RECORD => {
            if plen > MAX_DATA {
                return Err(ProtoError::Malformed(format!("record of {plen} bytes (max {MAX_DATA})")));
            }
        }
        k => return Err(ProtoError::Malformed(format!("unknown entry kind {k}"))),
    }
    c.bytes(plen)?;
    Ok(EntryHead { seq, sco, len: ENTRY_HEADER + plen })
}

/// Decode the entry at the start of `buf` (copies the payload).
pub fn decode_entry(buf: &[u8]) -> Result<(EntryHead, Entry), ProtoError> {
    let head = check_entry(buf)?;
    let payload = &buf[ENTRY_HEADER..head.len];
    let body = if buf[16] == KIND_DATA {
        let index = u32::from_le_bytes(payload[0..4].try_into().unwrap());
        let cluster = u64::from_le_bytes(payload[4..12].try_into().unwrap());
        EntryBody::Data { index, cluster, data: payload[DATA_HEADER..].to_vec() }
    } else {
        EntryBody::Record(payload.to_vec())
    };
    Ok((head, Entry { sco: head.sco, body }))
}

/// Walk `count` encoded entries that must fill `raw` exactly.
pub fn check_entries(raw: &[u8], count: u32) -> Result<Vec<EntryHead>, ProtoError> {
    let mut heads = Vec::with_capacity((count as usize).min(raw.len() / ENTRY_HEADER + 1));
    let mut off = 0;
    for _ in 0..count {
        let h = check_entry(&raw[off..])?;
        off += h.len;
        heads.push(h);
    }
    if off != raw.len() {
        return Err(ProtoError::Malformed(format!("{} bytes after {count} entries", raw.len() - off)));
    }
    Ok(heads)
}

/// Decode `count` entries that fill `raw` exactly.
pub fn decode_entries(raw: &[u8], count: u32) -> Result<Vec<(u64, Entry)>, ProtoError> {
    let mut out = Vec::new();
    let mut off = 0;
    for _ in 0..count {
        let (h, e) = decode_entry(&raw[off..])?;
        off += h.len;
        out.push((h.seq, e));
    }
    if off != raw.len() {
        return Err(ProtoError::Malformed(format!("{} bytes after {count} entries", raw.len() - off)));
    }
    Ok(out)
}
