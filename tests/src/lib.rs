// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared fixtures for the cross-crate integration tests in `tests/tests/`.

// Fixture code: a failure here is a broken test setup, reported as a panic of
// the test that asked for it.
#![allow(clippy::expect_used)]

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// Guest memory with several regions and a hole, spanning the DMA zone
/// boundaries (16 MiB and 4 GiB):
///
/// | region | start     | size    |
/// |--------|-----------|---------|
/// | 0      | 0         | 8 MiB   |
/// | 1      | 8 MiB     | 24 MiB  |
/// | hole   | 32 MiB    | 32 MiB  |
/// | 2      | 64 MiB    | 16 MiB  |
/// | 3      | 4 GiB     | 16 MiB  |
///
/// The regions are backed by anonymous mappings, so the large guest-physical
/// span costs only the pages touched.
pub fn fragmented_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), (8 * MIB) as usize),
        (GuestAddress(8 * MIB), (24 * MIB) as usize),
        (GuestAddress(64 * MIB), (16 * MIB) as usize),
        (GuestAddress(4096 * MIB), (16 * MIB) as usize),
    ])
    .expect("the fixture's ranges are valid and do not overlap")
}
