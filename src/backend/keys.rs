//! Object key layout in the store: `<volume>/g<gen>/sco/<n>`, `<volume>/g<gen>/tlog/<n>`,
//! `<volume>/meta/volume/<version>`, `<volume>/meta/checkpoint/<epoch>-g<gen>`,
//! `<volume>/meta/dtl/<n>` (the owner's DTL coverage marks), `<volume>/meta/probe/<id>`.

/// Key of SCO `n` written by owner generation `gen`.
pub fn sco(volume: &str, gen: u32, n: u64) -> String {
    format!("{volume}/g{gen:06}/sco/{n:016x}")
}

/// Key of TLog `n` written by owner generation `gen`.
pub fn tlog(volume: &str, gen: u32, n: u64) -> String {
    format!("{volume}/g{gen:06}/tlog/{n:016x}")
}

/// Prefix of all generations of a volume's data objects.
pub fn volume_prefix(volume: &str) -> String {
    format!("{volume}/")
}

/// Key of version `v` of a volume's configuration record.
pub fn volume_meta(volume: &str, version: u64) -> String {
    format!("{volume}/meta/volume/{version:016x}")
}

pub fn volume_meta_prefix(volume: &str) -> String {
    format!("{volume}/meta/volume/")
}

/// Key of the checkpoint of a volume's metadata as of the end of epoch `epoch`, written
/// by owner generation `gen`.
pub fn checkpoint(volume: &str, gen: u32, epoch: u64) -> String {
    format!("{volume}/meta/checkpoint/{epoch:016x}-g{gen:06}")
}

/// `(epoch, gen)` of a checkpoint key (`gen` is `None` for keys written before
/// generations were part of them).
pub fn parse_checkpoint_key(key: &str) -> Option<(u64, Option<u32>)> {
    let last = key.rsplit('/').next()?;
    let (num, gen) = match last.split_once("-g") {
        Some((n, g)) => (n, Some(g.parse().ok()?)),
        None => (last, None),
    };
    if num.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(num, 16).ok()?, gen))
}

/// Key of the `n`th DTL coverage mark of a volume (the newest one counts).
pub fn dtl_mark(volume: &str, n: u64) -> String {
    format!("{volume}/meta/dtl/{n:016x}")
}

pub fn dtl_mark_prefix(volume: &str) -> String {
    format!("{volume}/meta/dtl/")
}

/// Key of a conditional-put probe object.
pub fn probe(volume: &str, id: u64) -> String {
    format!("{volume}/meta/probe/{id:016x}")
}

pub fn checkpoint_prefix(volume: &str) -> String {
    format!("{volume}/meta/checkpoint/")
}

/// Parse the trailing hex number of a key (`.../sco/00000000000000ab` → 0xab).
pub fn trailing_number(key: &str) -> Option<u64> {
    let last = key.rsplit('/').next()?;
    if last.len() != 16 {
        return None;
    }
    u64::from_str_radix(last, 16).ok()
}

/// Parse `(gen, kind, n)` from a data key of `volume`.
pub fn parse_data_key<'a>(volume: &str, key: &'a str) -> Option<(u32, &'a str, u64)> {
    let rest = key.strip_prefix(volume)?.strip_prefix("/g")?;
    let mut parts = rest.split('/');
    let gen: u32 = parts.next()?.parse().ok()?;
    let kind = parts.next()?;
    let n = trailing_number(key)?;
    if parts.count() != 1 {
        return None;
    }
    Some((gen, kind, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k = sco("vm1", 3, 0xab);
        assert_eq!(k, "vm1/g000003/sco/00000000000000ab");
        assert_eq!(parse_data_key("vm1", &k), Some((3, "sco", 0xab)));
        assert_eq!(parse_data_key("vm", &k), None);
        assert_eq!(parse_checkpoint_key(&checkpoint("v", 3, 7)), Some((7, Some(3))));
        assert_eq!(parse_checkpoint_key("v/meta/checkpoint/0000000000000007"), Some((7, None)));
        assert_eq!(trailing_number(&dtl_mark("v", 9)), Some(9));
    }
}
