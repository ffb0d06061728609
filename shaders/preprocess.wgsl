// Input preprocessing: a batch of u8 (H, W, 3) RGB images to the network's (N, 3, H, W) input,
// (byte / 255 - 0.5) / 0.5, each image mirrored left-right where its flip flag is non-zero.
// CPU twin: elasticface_core::nn::preprocess_image (one image).
// Params mirrors `PreprocessParams` in host/src/gpu/kernels/preprocess.rs.
//
// Input layout. The N images' bytes are contiguous, image after image, each in (H, W, 3) order, and packed four
// to a u32 word, little-endian: byte b is bits 8*(b % 4) .. of word b / 4 (the host packs them and zero-pads the
// last word; `Preprocess::pack`).
//
// Index math. One thread per output element i = ((img*3 + ch)*H + y)*W + x. It reads byte
//   b = img*H*W*3 + (y*W + sx)*3 + ch,   sx = W-1-x if flip[img] != 0 else x,
// so out[img, ch, y, x] = hwc[img][y, sx, ch], as the core's flip.
//
// Arithmetic. The value of a byte comes from a 256-entry table that the host fills from the core itself
// (`lut[b]` is what `preprocess_image` makes of byte b), so the output is bit-identical to the core on every
// GPU. (Computing `(f32(b) / 255.0 - 0.5) / 0.5` here would not be: WGSL allows 2.5 ULP for `x / y`.)
//
// Storage. The input is stored as `Out`: f32 here, f16 for mixed precision's activations (the host rewrites the
// alias). For f16 the host binds the table rounded to f16 by the core's `round_to_f16` (still f32, each value one
// that f16 holds): the conversion is exact, where WGSL lets a GPU round an inexact f32 -> f16 either way.
alias Out = f32;

struct Params {
    len: u32,  // N*3*H*W output elements
    h: u32,
    w: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> lut: array<f32, 256>;
@group(0) @binding(2) var<storage, read> images: array<u32>;
@group(0) @binding(3) var<storage, read> flip: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<Out>;

@compute @workgroup_size(WG)
fn preprocess_image(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if i < p.len {
        let x = i % p.w;
        let y = (i / p.w) % p.h;
        let plane = i / (p.w * p.h); // img*3 + ch
        let ch = plane % 3u;
        let img = plane / 3u;
        var sx = x;
        if flip[img] != 0u {
            sx = p.w - 1u - x;
        }
        let b = img * p.h * p.w * 3u + (y * p.w + sx) * 3u + ch;
        let byte = (images[b / 4u] >> (8u * (b % 4u))) & 0xffu;
        out[i] = Out(lut[byte]);
    }
}
