//! Renders a grid of synthetic faces (rows: identities, columns: samples) to a PNG, to look at the generator.
//! Usage: cargo run --release -p elasticface --example face_grid -- OUT.png [SIZE] [SEED]
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).map(String::as_str).unwrap_or("faces.png");
    let size: usize = args.get(2).map_or(Ok(112), |s| s.parse())?;
    let seed: u64 = args.get(3).map_or(Ok(0), |s| s.parse())?;
    let (rows, cols) = (6, 8);
    let shape = elasticface_core::nn::ImageShape { h: size, w: size };
    let mut grid = vec![0u8; rows * cols * size * size * 3];
    for r in 0..rows {
        for c in 0..cols {
            let img = elasticface::data::faces::render(seed, r as u64, c as u64, shape);
            for y in 0..size {
                let dst = ((r * size + y) * cols * size + c * size) * 3;
                grid[dst..dst + size * 3].copy_from_slice(&img[y * size * 3..(y + 1) * size * 3]);
            }
        }
    }
    let png = elasticface::data::decode::encode_png(
        &grid,
        elasticface_core::nn::ImageShape { h: rows * size, w: cols * size },
    )?;
    std::fs::write(out, png)?;
    Ok(())
}
