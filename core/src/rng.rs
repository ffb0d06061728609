//! Counter-based random numbers (Philox4x32-10) and a normal sampler on `libm`.
//! TODO(helper)
