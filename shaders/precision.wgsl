// round_to_f16: dst = src rounded to IEEE binary16, stored as f16 (two to a 32-bit word).
// CPU twin: elasticface_core::nn::round_to_f16 (which keeps the rounded values as f32).
// Params mirrors `PrecisionParams` in host/src/gpu/kernels/precision.rs.
//
// The rounding is integer arithmetic on the bits, defined on every adapter (WGSL leaves the conversion of an
// out-of-range value to f16 indeterminate): to nearest, ties to even; subnormals in steps of 2^-24; +-infinity
// from 65520 on; a NaN stays a NaN. dst is bound as words, element 2w in the low half of word w and 2w + 1 in
// the high half (as an f16 array lays them out); a last odd element's high half gets zero.

struct Params {
    len: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

// The binary16 bits of v rounded to nearest, ties to even.
fn f16_bits(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if a > 0x7f800000u {
        return sign | 0x7e00u;
    }
    if a >= 0x477ff000u {
        // 65520 and beyond (the tie between 65504 and 2^16 goes to even, out of range).
        return sign | 0x7c00u;
    }
    if a >= 0x38800000u {
        // Normal (2^-14 and beyond): round the 23-bit significand to 10 bits, ties to even (a carry moves into
        // the exponent), then rebias the exponent from 127 to 15.
        let r = a + 0xfffu + ((a >> 13u) & 1u);
        return sign | ((r - 0x38000000u) >> 13u);
    }
    // Subnormal: a multiple of 2^-24 (the scaling is exact; `round` ties to even); 1024 is 2^-14, the first normal.
    return sign | u32(round(abs(v) * 16777216.0));
}

@compute @workgroup_size(WG)
fn round_to_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = gid.y * nwg.x * WG + gid.x;
    let i = 2u * w;
    if i < p.len {
        var high = 0u;
        if i + 1u < p.len {
            high = f16_bits(src[i + 1u]);
        }
        dst[w] = f16_bits(src[i]) | (high << 16u);
    }
}
