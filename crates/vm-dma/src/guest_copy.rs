// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Copies between two ranges of guest memory, walking region boundaries.
//!
//! vm-memory copies between a guest range and a host buffer, and between two
//! `VolatileSlice`s, but has no guest-to-guest copy that walks fragmented
//! ranges; bounce buffers need exactly that, without staging through a host
//! buffer (which would allocate on the map path).

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::{Error, Result};

/// Bytes from `addr` to the end of the region that holds it.
fn region_remaining<M: GuestMemoryBackend>(mem: &M, addr: GuestAddress) -> Option<u64> {
    let r = mem.find_region(addr)?;
    // `addr` lies in the region, so the difference cannot underflow and the
    // sum cannot exceed the region length.
    Some(r.len() - (addr.0 - r.start_addr().0))
}

/// Copies `len` bytes from guest `src` to guest `dst` (memmove semantics
/// within each fragment). Both ranges are checked first, so a failure moves
/// no byte.
pub(crate) fn copy_guest<M: GuestMemoryBackend>(
    mem: &M,
    src: GuestAddress,
    dst: GuestAddress,
    len: u64,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let n = usize::try_from(len).map_err(|_| Error::NotGuestMemory {
        addr: src.0,
        size: len,
    })?;
    for base in [src, dst] {
        if !mem.check_range(base, n) {
            return Err(Error::NotGuestMemory {
                addr: base.0,
                size: len,
            });
        }
    }
    let mut done = 0u64;
    while done < len {
        // Both ranges were checked, so these additions stay in guest memory.
        let s = GuestAddress(src.0 + done);
        let d = GuestAddress(dst.0 + done);
        let chunk = (len - done)
            .min(region_remaining(mem, s).unwrap_or(0))
            .min(region_remaining(mem, d).unwrap_or(0));
        if chunk == 0 {
            return Err(Error::NotGuestMemory {
                addr: s.0,
                size: len - done,
            });
        }
        // `chunk` is at most `len`, which fits in usize.
        let c = chunk as usize;
        let from = mem.get_slice(s, c)?;
        let to = mem.get_slice(d, c)?;
        from.copy_to_volatile_slice(to);
        done += chunk;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn copy_walks_across_region_boundaries() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x10000), 0x3000),
        ])
        .unwrap();
        let data: Vec<u8> = (0..0x1800u32).map(|i| (i * 7) as u8).collect();
        mem.write_slice(&data, GuestAddress(0x400)).unwrap();
        copy_guest(&mem, GuestAddress(0x400), GuestAddress(0x10800), 0x1800).unwrap();
        let mut back = vec![0u8; 0x1800];
        mem.read_slice(&mut back, GuestAddress(0x10800)).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn copy_into_a_hole_moves_nothing() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x3000), 0x1000),
        ])
        .unwrap();
        mem.write_slice(&[0xaa; 16], GuestAddress(0)).unwrap();
        let err = copy_guest(&mem, GuestAddress(0), GuestAddress(0xff8), 16).unwrap_err();
        assert!(matches!(
            err,
            Error::NotGuestMemory {
                addr: 0xff8,
                size: 16
            }
        ));
        let mut b = [0u8; 8];
        mem.read_slice(&mut b, GuestAddress(0xff8)).unwrap();
        assert_eq!(b, [0; 8]);
    }
}
