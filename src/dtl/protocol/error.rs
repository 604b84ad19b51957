//! Why the DTL protocol rejects something: [`ProtoError`] for a frame or message that
//! cannot be read, [`ErrorCode`] for the codes an ERROR reply carries.

use std::fmt;
use std::io;

/// Why a frame or message was rejected.
#[derive(Debug)]
pub enum ProtoError {
    Io(io::Error),
    /// The peer closed the connection inside a frame.
    Truncated,
    /// A frame length above the limit (the body is not read).
    TooLarge(usize),
    /// The frame's checksum does not match its body.
    BadChecksum,
    /// A frame that does not decode.
    Malformed(String),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Io(e) => write!(f, "{e}"),
            ProtoError::Truncated => write!(f, "connection closed inside a frame"),
            ProtoError::TooLarge(n) => write!(f, "frame of {n} bytes is above the limit"),
            ProtoError::BadChecksum => write!(f, "frame checksum mismatch"),
            ProtoError::Malformed(m) => write!(f, "malformed frame: {m}"),
        }
    }
}

impl std::error::Error for ProtoError {}

impl From<io::Error> for ProtoError {
    fn from(e: io::Error) -> Self {
        ProtoError::Io(e)
    }
}

/// Error codes of ERROR replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The token does not match the server's.
    BadToken,
    /// The server does not speak this protocol version.
    BadVersion,
    /// The volume name is not 1–64 characters of `A-Za-z0-9._-` (not starting with `.`/`-`).
    BadName,
    /// A higher owner generation holds the volume.
    Fenced,
    /// A frame that does not decode, a bad checksum, or a request before HELLO.
    Malformed,
    /// A frame above the size limit.
    TooLarge,
    /// Entries whose sequence numbers leave a gap after what the server holds.
    SeqGap,
    /// The server could not read or write its disk.
    Storage,
    /// Too many connections, or the server is stopping.
    Busy,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::BadToken => 1,
            ErrorCode::BadVersion => 2,
            ErrorCode::BadName => 3,
            ErrorCode::Fenced => 4,
            ErrorCode::Malformed => 5,
            ErrorCode::TooLarge => 6,
            ErrorCode::SeqGap => 7,
            ErrorCode::Storage => 8,
            ErrorCode::Busy => 9,
            ErrorCode::Other(n) => n,
        }
    }

    pub fn from_u16(n: u16) -> ErrorCode {
        match n {
            1 => ErrorCode::BadToken,
            2 => ErrorCode::BadVersion,
            3 => ErrorCode::BadName,
            4 => ErrorCode::Fenced,
            5 => ErrorCode::Malformed,
            6 => ErrorCode::TooLarge,
            7 => ErrorCode::SeqGap,
            8 => ErrorCode::Storage,
            9 => ErrorCode::Busy,
            n => ErrorCode::Other(n),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorCode::BadToken => "bad-token",
            ErrorCode::BadVersion => "bad-version",
            ErrorCode::BadName => "bad-name",
            ErrorCode::Fenced => "fenced",
            ErrorCode::Malformed => "malformed",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::SeqGap => "seq-gap",
            ErrorCode::Storage => "storage",
            ErrorCode::Busy => "busy",
            ErrorCode::Other(n) => return write!(f, "code-{n}"),
        };
        f.write_str(s)
    }
}
