//! Fixed newstyle negotiation: greeting, client flags, then option haggling until the
//! client picks an export (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) or leaves.
//!
//! Options: `EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO`, `STRUCTURED_REPLY`,
//! `LIST_META_CONTEXT`, `SET_META_CONTEXT` (`base:allocation` and, on snapshot exports,
//! `logdisk:changed-since:SNAP`); anything else gets `NBD_REP_ERR_UNSUP`. A listener
//! with a token wants export names `TOKEN/NAME` and refuses `LIST`.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::protocol::*;
use super::{ExportSet, ExportTarget, NbdError};
use crate::volume::extents::ChangedExtent;

/// Largest read or write payload (bigger requests are refused).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Wrong tokens a connection may present before it is closed.
const MAX_AUTH_FAILURES: u32 = 3;
pub const ALLOCATION: &str = "base:allocation";
pub const CHANGED_SINCE: &str = "logdisk:changed-since:";

/// A metadata context selected for `NBD_CMD_BLOCK_STATUS`.
#[derive(Debug, Clone)]
pub enum MetaContext {
    /// `base:allocation`: holes (never written, discarded, zeroed) and data.
    Allocation,
    /// `logdisk:changed-since:SNAP`: flag 1 on clusters that differ from SNAP.
    ChangedSince(Arc<Vec<ChangedExtent>>),
}

/// What the negotiation agreed on.
pub struct Session {
    pub name: String,
    pub export: Arc<dyn ExportTarget>,
    pub structured: bool,
    /// Selected contexts with their ids.
    pub contexts: Vec<(u32, MetaContext)>,
    pub flags: u16,
}

/// How the option haggling ended.
pub enum Negotiation {
    Transmit(Session),
    /// The client aborted or left.
    Ended,
}

/// Who may use the exports of a listener.
#[derive(Clone, Default)]
pub struct Auth {
    /// Export names must be `TOKEN/NAME`.
    pub token: Option<String>,
}

impl Auth {
    /// The export name without its token; `None` for a wrong or missing token.
    fn strip<'a>(&self, name: &'a str) -> Option<&'a str> {
        let Some(t) = &self.token else { return Some(name) };
        let (given, rest) = name.split_once('/')?;
        // Constant time in the token's length.
        let eq = given.len() == t.len() && given.bytes().zip(t.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
        eq.then_some(rest)
    }
}

/// Transmission flags of an export.
pub fn transmission_flags(export: &dyn ExportTarget, structured: bool) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN;
    if structured {
        f |= TF_SEND_DF;
    }
    if export.read_only() {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
    }
    f
}

struct Haggle<'a> {
    exports: &'a dyn ExportSet,
    auth: &'a Auth,
    shutting_down: &'a AtomicBool,
    structured: bool,
    no_zeroes: bool,
    /// Contexts set by `SET_META_CONTEXT`, for this export name.
    meta: Option<(String, Vec<(u32, MetaContext)>)>,
    auth_failures: u32,
    out: Vec<u8>,
}

/// Run the handshake on a fresh connection.
pub fn negotiate(
    r: &mut impl Read,
    w: &mut impl Write,
    exports: &dyn ExportSet,
    auth: &Auth,
    shutting_down: &AtomicBool,
) -> Result<Negotiation, NbdError> {
    let mut greet = Vec::with_capacity(18);
    greet.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greet.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greet.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greet)?;
    let mut cf = [0u8; 4];
    r.read_exact(&mut cf)?;
    let client = u32::from_be_bytes(cf);
    if client & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!("unknown client flags {client:#x}")));
    }
    let mut h = Haggle {
        exports,
        auth,
        shutting_down,
        structured: false,
        no_zeroes: client & FLAG_C_NO_ZEROES != 0,
        meta: None,
        auth_failures: 0,
        out: Vec::with_capacity(256),
    };
    let mut data = Vec::new();
    loop {
        let mut hb = [0u8; 16];
        match r.read_exact(&mut hb) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Negotiation::Ended),
            Err(e) => return Err(e.into()),
        }
        let oh = parse_option_header(&hb)?;
        if oh.len > MAX_OPTION_LEN {
            return Err(NbdError::Protocol(format!(
                "option {} carries {} bytes (at most {MAX_OPTION_LEN})",
                oh.option, oh.len
            )));
        }
        data.resize(oh.len as usize, 0);
        r.read_exact(&mut data)?;
        h.out.clear();
        let step = h.option(oh.option, &data)?;
        w.write_all(&h.out)?;
        match step {
            Step::More => {}
            Step::Go(s) => return Ok(Negotiation::Transmit(s)),
            Step::End => return Ok(Negotiation::Ended),
        }
    }
}

enum Step {
    More,
    Go(Session),
    End,
}

impl Haggle<'_> {
    fn error(&mut self, option: u32, kind: u32, msg: &str) -> Result<Step, NbdError> {
        tracing::debug!(option = option_name(option), "option refused: {msg}");
        opt_reply(&mut self.out, option, kind, msg.as_bytes());
        if kind == REP_ERR_POLICY && self.auth_failures >= MAX_AUTH_FAILURES {
            tracing::warn!("closing an NBD connection after {MAX_AUTH_FAILURES} wrong tokens");
            return Ok(Step::End);
        }
        Ok(Step::More)
    }

    /// Resolve a client's export name (token checked, empty = default export).
    fn resolve(&mut self, name: &str) -> Result<(String, Arc<dyn ExportTarget>), (u32, String)> {
        let Some(bare) = self.auth.strip(name) else {
            self.auth_failures += 1;
            return Err((REP_ERR_POLICY, "this export needs a token: use TOKEN/NAME as the export name".into()));
        };
        let bare = if bare.is_empty() {
            match self.exports.names().into_iter().next() {
                Some(n) => n,
                None => return Err((REP_ERR_UNKNOWN, "no default export".into())),
            }
        } else {
            bare.to_string()
        };
        match self.exports.open(&bare) {
            Ok(e) => Ok((bare, e)),
            Err(msg) => Err((REP_ERR_UNKNOWN, msg)),
        }
    }

    fn option(&mut self, option: u32, data: &[u8]) -> Result<Step, NbdError> {
        if self.shutting_down.load(Ordering::Relaxed) && option != OPT_ABORT {
            if option == OPT_EXPORT_NAME {
                return Ok(Step::End);
            }
            return self.error(option, REP_ERR_SHUTDOWN, "the server is shutting down");
        }
        match option {
            OPT_EXPORT_NAME => {
                let Ok(name) = utf8(data) else { return Ok(Step::End) };
                // No way to report an error here: the connection is closed.
                let Ok((name, export)) = self.resolve(name) else { return Ok(Step::End) };
                let flags = transmission_flags(export.as_ref(), self.structured);
                self.out.extend_from_slice(&export.size().to_be_bytes());
                self.out.extend_from_slice(&flags.to_be_bytes());
                if !self.no_zeroes {
                    self.out.extend_from_slice(&[0u8; 124]);
                }
                let contexts = self.contexts_for(&name);
                Ok(Step::Go(Session { name, export, structured: self.structured, contexts, flags }))
            }
            OPT_ABORT => {
                opt_reply(&mut self.out, option, REP_ACK, &[]);
                Ok(Step::End)
            }
            OPT_LIST => {
                if !data.is_empty() {
                    return self.error(option, REP_ERR_INVALID, "LIST takes no data");
                }
                if self.auth.token.is_some() {
                    return self.error(option, REP_ERR_POLICY, "export listing is off on this listener");
                }
                for n in self.exports.names() {
                    let mut d = Vec::with_capacity(4 + n.len());
                    d.extend_from_slice(&(n.len() as u32).to_be_bytes());
                    d.extend_from_slice(n.as_bytes());
                    opt_reply(&mut self.out, option, REP_SERVER, &d);
                }
                opt_reply(&mut self.out, option, REP_ACK, &[]);
                Ok(Step::More)
            }
            OPT_STARTTLS => self.error(option, REP_ERR_UNSUP, "TLS is not supported: use a unix socket or a token"),
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return self.error(option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
                }
                self.structured = true;
                opt_reply(&mut self.out, option, REP_ACK, &[]);
                Ok(Step::More)
            }
            OPT_INFO | OPT_GO => self.info_go(option, data),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(option, data),
            _ => self.error(option, REP_ERR_UNSUP, "unsupported option"),
        }
    }

    fn info_go(&mut self, option: u32, data: &[u8]) -> Result<Step, NbdError> {
        let req = match parse_go(data) {
            Ok(r) => r,
            Err(e) => return self.error(option, REP_ERR_INVALID, &e.to_string()),
        };
        let (name, export) = match self.resolve(req.name) {
            Ok(x) => x,
            Err((kind, msg)) => return self.error(option, kind, &msg),
        };
        let flags = transmission_flags(export.as_ref(), self.structured);
        info_export(&mut self.out, option, export.size(), flags);
        for item in req.infos {
            match item {
                INFO_NAME => info_string(&mut self.out, option, INFO_NAME, &name),
                INFO_DESCRIPTION => info_string(&mut self.out, option, INFO_DESCRIPTION, &export.description()),
                INFO_BLOCK_SIZE => info_block_size(&mut self.out, option, 1, export.block_size().max(512), MAX_PAYLOAD),
                _ => {}
            }
        }
        opt_reply(&mut self.out, option, REP_ACK, &[]);
        if option == OPT_INFO {
            return Ok(Step::More);
        }
        let contexts = self.contexts_for(&name);
        Ok(Step::Go(Session { name, export, structured: self.structured, contexts, flags }))
    }

    /// The contexts set for `name` (contexts set for another export do not carry over).
    fn contexts_for(&mut self, name: &str) -> Vec<(u32, MetaContext)> {
        match self.meta.take() {
            Some((n, c)) if n == name => c,
            _ => Vec::new(),
        }
    }

    fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<Step, NbdError> {
        if !self.structured {
            return self.error(option, REP_ERR_INVALID, "negotiate structured replies first");
        }
        let req = match parse_meta(data) {
            Ok(r) => r,
            Err(e) => return self.error(option, REP_ERR_INVALID, &e.to_string()),
        };
        let (name, export) = match self.resolve(req.name) {
            Ok(x) => x,
            Err((kind, msg)) => return self.error(option, kind, &msg),
        };
        let set = option == OPT_SET_META_CONTEXT;
        let mut chosen: Vec<(String, MetaContext)> = Vec::new();
        let queries = if req.queries.is_empty() && !set { vec![ALLOCATION] } else { req.queries };
        for q in queries {
            if q == ALLOCATION || q == "base:" {
                if !chosen.iter().any(|(n, _)| n == ALLOCATION) {
                    chosen.push((ALLOCATION.to_string(), MetaContext::Allocation));
                }
            } else if let Some(snap) = q.strip_prefix(CHANGED_SINCE).filter(|s| !s.is_empty()) {
                match export.changed_since(snap) {
                    Some(Ok(ext)) => chosen.push((q.to_string(), MetaContext::ChangedSince(Arc::new(ext)))),
                    Some(Err(e)) => tracing::info!(export = %name, "context {q} not offered: {e}"),
                    None => {}
                }
            }
        }
        let mut selected = Vec::new();
        for (i, (n, c)) in chosen.into_iter().enumerate() {
            let id = if set { i as u32 + 1 } else { 0 };
            let mut d = Vec::with_capacity(4 + n.len());
            d.extend_from_slice(&id.to_be_bytes());
            d.extend_from_slice(n.as_bytes());
            opt_reply(&mut self.out, option, REP_META_CONTEXT, &d);
            selected.push((id, c));
        }
        opt_reply(&mut self.out, option, REP_ACK, &[]);
        if set {
            self.meta = Some((name, selected));
        }
        Ok(Step::More)
    }
}
