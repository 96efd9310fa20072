//! The TIFF/BigTIFF directory reader under the format readers: the header, IFDs and their tags,
//! every read bounded, through an `ObjectReader`.

use super::*;

/// One directory entry: tag, type, count, and the raw value field or the bytes it points to.
pub(super) struct Tag {
    pub(super) code: u16,
    pub(super) typ: u16,
    pub(super) count: u64,
    pub(super) value: Vec<u8>,
}

pub(super) struct Reader<'a> {
    pub(super) file: &'a dyn ObjectReader,
    pub(super) le: bool,
    pub(super) big: bool,
}

impl<'a> Reader<'a> {
    pub(super) fn new(file: &'a dyn ObjectReader, le: bool, big: bool) -> Reader<'a> {
        Reader { file, le, big }
    }

    pub(super) fn u16_in(&self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.le {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }

    pub(super) fn u32_in(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }

    pub(super) fn u64_in(&self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        if self.le {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }

    pub(super) fn read(&self, at: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, at).map_err(io)?;
        Ok(buf)
    }

    /// The entries of the IFD at `at`, and the offset of the next IFD.
    pub(super) fn ifd(&self, at: u64) -> Result<(Vec<Tag>, u64)> {
        let (count_len, entry_len, value_len) = if self.big { (8, 20, 8) } else { (2, 12, 4) };
        let head = self.read(at, count_len)?;
        let count = if self.big {
            self.u64_in(&head)
        } else {
            u64::from(self.u16_in(&head))
        };
        if count > 4096 {
            return Err(SourceError::Undecodable("TIFF directory too large".into()));
        }
        let body = self.read(
            at + count_len as u64,
            count as usize * entry_len + value_len,
        )?;
        let mut tags = Vec::with_capacity(count as usize);
        for e in body.chunks_exact(entry_len).take(count as usize) {
            let code = self.u16_in(&e[0..2]);
            let typ = self.u16_in(&e[2..4]);
            let n = if self.big {
                self.u64_in(&e[4..12])
            } else {
                u64::from(self.u32_in(&e[4..8]))
            };
            let field = &e[entry_len - value_len..];
            let size = type_size(typ).saturating_mul(n);
            // Only the tags used below are fetched from elsewhere in the file.
            let wanted = matches!(
                code,
                256..=259
                    | 262
                    | 266
                    | 273
                    | 274
                    | 277..=279
                    | 284
                    | 292
                    | 317
                    | 320
                    | 322..=325
                    | 330
                    | 332
                    | 338
                    | 339
                    | 347
                    | 513
                    | 514
                    | 530
            );
            let profile = code == 34675 && size <= MAX_ICC;
            let value = if size <= value_len as u64 {
                field.to_vec()
            } else if (wanted && size <= MAX_TILES * 8) || profile {
                let off = if self.big {
                    self.u64_in(field)
                } else {
                    u64::from(self.u32_in(field))
                };
                self.read(off, size as usize)?
            } else {
                Vec::new()
            };
            tags.push(Tag {
                code,
                typ,
                count: n,
                value,
            });
        }
        let next_field = &body[count as usize * entry_len..];
        let next = if self.big {
            self.u64_in(next_field)
        } else {
            u64::from(self.u32_in(next_field))
        };
        Ok((tags, next))
    }

    /// The integer values of a SHORT, LONG or LONG8 tag.
    pub(super) fn values(&self, tag: &Tag) -> Vec<u64> {
        let size = type_size(tag.typ) as usize;
        if size == 0 || tag.value.len() < size * tag.count as usize {
            return Vec::new();
        }
        tag.value
            .chunks_exact(size)
            .take(tag.count as usize)
            .map(|c| match tag.typ {
                3 => u64::from(self.u16_in(c)),
                4 | 13 => u64::from(self.u32_in(c)),
                16 | 18 => self.u64_in(c),
                _ => u64::from(c[0]),
            })
            .collect()
    }
}

pub(super) fn type_size(typ: u16) -> u64 {
    match typ {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 | 16 | 17 | 18 => 8,
        _ => 0,
    }
}

pub(super) fn io(e: std::io::Error) -> SourceError {
    SourceError::from_read(e, |e| SourceError::Undecodable(format!("TIFF: {e}")))
}
