//! SplitMix64 (Steele, Lea & Flood, 2014): the small generator behind seeded initialisation
//! and per-step seeds. One definition, so the two cannot drift apart.

/// The generator's increment (the golden-ratio constant).
pub(crate) const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The finaliser: a well-mixed 64-bit value from any input.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
