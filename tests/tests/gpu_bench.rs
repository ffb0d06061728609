//! `elasticface bench` on a tiny network (lavapipe in CI): the measurement runs real training steps, its profile
//! accounts for every dispatch of a step, and its figures are consistent with one another.

use std::sync::Arc;
use std::time::Duration;

use elasticface::bench::network::{gflop_per_step, measure, tune, tune_settings, NetworkBenchConfig};
use elasticface::gpu::kernels::conv2d::{ConvPrecision, ConvTileChoice, FragmentSide, TileShape};
use elasticface::gpu::kernels::winograd::WinogradTileChoice;
use elasticface::gpu::{Gpu, GpuOptions};
use elasticface::train::gpu::ConvSettings;
use elasticface_core::margin::MarginConfig;
use elasticface_core::model::IResNetConfig;

const TINY: IResNetConfig =
    IResNetConfig { layers: [1, 1, 1, 1], widths: [4, 8, 8, 16], input_h: 16, input_w: 16, embedding: 8 };

/// The tiny net at batch 4 with 10 classes, every eligible layer as Winograd (so that a profile covers its kernels
/// too: by `auto`, F(4x4) on the 32x32 and 16x16 layers, which have at least 64 tiles of 4x4 in the batch, F(2x2)
/// on the others), one warm-up step.
fn tiny_bench() -> NetworkBenchConfig {
    NetworkBenchConfig {
        cfg: TINY,
        arch: "tiny".into(),
        batch: 4,
        classes: 10,
        margin: MarginConfig::ELASTIC_ARC,
        precision: ConvPrecision::F32,
        winograd: Some(1),
        winograd_tile: WinogradTileChoice::Auto,
        conv_tile: ConvTileChoice::Auto,
        warmup: 1,
        steps: 1,
        profile: false,
        seed: 5,
    }
}

#[test]
fn the_network_benchmark_trains_profiles_every_dispatch_and_adds_up() {
    if elasticface_tests::gpu().is_none() {
        return;
    }
    // Unchecked, as the command runs (the kernels are tested checked elsewhere).
    let gpu = Arc::new(Gpu::new(&GpuOptions::from_env()).unwrap());
    let cfg = NetworkBenchConfig { steps: 3, profile: true, ..tiny_bench() };
    let r = measure(gpu.clone(), &cfg, true).unwrap();
    assert_eq!((r.steps, r.warmup, r.batch, r.classes), (3, 1, 4, 10));
    assert!(r.step_ms_min <= r.step_ms_median && r.step_ms_median <= r.step_ms_max);
    assert!((r.images_per_s - 4.0 / (r.step_ms_median / 1e3)).abs() <= 1e-6 * r.images_per_s);
    assert_eq!(r.gflop_per_step, gflop_per_step(&TINY, 4));
    assert!(r.loss_first.is_finite() && r.loss_last.is_finite(), "the steps train: {r:?}");
    let m = &r.memory;
    assert_eq!(m.total, m.parameters + m.head + m.activations + m.gradient_buffers + m.scratch);
    if gpu.caps.timestamps {
        // The profiled step times every dispatch of a step exactly once.
        let profiled: usize = r.kernels.iter().map(|k| k.dispatches).sum();
        assert_eq!(profiled, r.dispatches_per_step);
        let share: f64 = r.kernels.iter().map(|k| k.share).sum();
        assert!((share - 1.0).abs() < 1e-9, "shares add up to {share}");
        let ms: f64 = r.kernels.iter().map(|k| k.ms).sum();
        assert!((ms - r.gpu_ms_profiled.unwrap()).abs() <= 1e-9 * ms.max(1.0));
        assert!(r.kernels.windows(2).all(|w| w[0].ms >= w[1].ms), "slowest first");
        for kernel in ["conv2d_forward", "winograd_input_transform", "winograd_f4_input_transform", "gemm_batched"] {
            // gemm_batched_vec4 counts as gemm_batched: which one runs depends on the products' sizes.
            assert!(r.kernels.iter().any(|k| k.kernel.starts_with(kernel)), "{kernel} is profiled");
        }
    } else {
        assert!(r.kernels.is_empty() && r.gpu_ms_profiled.is_none());
    }
    let table = r.to_string();
    assert!(table.contains("images/s") && table.contains("memory"), "{table}");
    let adapter_tile = ConvTileChoice::Auto.tiling(&gpu).tile.to_string();
    assert_eq!(r.conv_tile, adapter_tile);
    assert!(table.contains(&format!("on {adapter_tile} tiles")), "{table}");

    // Another tile is in force when asked for, and trains.
    let tile = TileShape::new(64, 128, 32);
    let cfg = NetworkBenchConfig { conv_tile: ConvTileChoice::Shape(tile), ..tiny_bench() };
    let r = measure(gpu.clone(), &cfg, true).unwrap();
    assert_eq!(r.conv_tile, "64x128x32");
    assert!(r.loss_first.is_finite() && r.loss_last.is_finite(), "the steps train: {r:?}");
}

#[test]
fn the_flop_count_is_the_convolutions_and_fc_of_forward_and_both_gradients() {
    // Widths 2, 16x16 input, every block the first of its stage (stride 2, downsample). Multiply-adds per image:
    // stem 3->2 at 16x16: 256 * 2 * 27 = 13,824 (forward and weight gradient: no input gradient);
    // blocks (conv1 3x3 at h x h, conv2 3x3 stride 2, downsample 1x1 stride 2), h = 16, 8, 4, 2:
    //   16: 9,216 + 2,304 + 256;  8: 2,304 + 576 + 64;  4: 576 + 144 + 16;  2: 144 + 36 + 4  -> 15,640;
    // fc 2 -> 2: 4. Flops: 2 x (2 x 13,824 + 3 x (15,640 + 4)) = 149,160.
    let cfg = IResNetConfig { layers: [1, 1, 1, 1], widths: [2, 2, 2, 2], input_h: 16, input_w: 16, embedding: 2 };
    assert!((gflop_per_step(&cfg, 1) - 149_160.0 / 1e9).abs() < 1e-18);
    assert!((gflop_per_step(&cfg, 3) - 3.0 * 149_160.0 / 1e9).abs() < 1e-18, "linear in the batch");
}

/// The f32 convolutions with Winograd from `winograd` channels (`None`: none) with `winograd_tile`, on the adapter's
/// convolution tile.
fn f32_setting(winograd: Option<usize>, winograd_tile: WinogradTileChoice) -> ConvSettings {
    ConvSettings { precision: ConvPrecision::F32, winograd, winograd_tile, conv_tile: ConvTileChoice::Auto }
}

/// Mixed precision with every convolution direct, on the adapter's convolution tile.
const MIXED: ConvSettings = ConvSettings {
    precision: ConvPrecision::Mixed,
    winograd: None,
    winograd_tile: WinogradTileChoice::Auto,
    conv_tile: ConvTileChoice::Auto,
};

/// What `tune_settings` lists for [`TINY`] on `gpu` around `default` (see there).
fn expected_tune_settings(gpu: &Gpu, default: ConvSettings) -> Vec<ConvSettings> {
    // The baselines (the default, every convolution direct, mixed precision's default where the adapter has tensor
    // cores); Winograd from each width of the network (4, 8, 16) with the auto tile, and in mixed precision with
    // F(2x2); the other tiles that fit, largest first, f32 then mixed; then F(2x2) throughout in f32 and the auto
    // tile in mixed precision. No repeats (the default is one of the width settings).
    let coop = gpu.caps.cooperative_matrix.is_some();
    let mixed_winograd = |w, winograd_tile| ConvSettings { winograd: Some(w), winograd_tile, ..MIXED };
    let mut expected = vec![default, f32_setting(None, WinogradTileChoice::Auto)];
    if coop {
        expected.push(MIXED);
    }
    for w in [4, 8, 16] {
        if f32_setting(Some(w), WinogradTileChoice::Auto) != default {
            expected.push(f32_setting(Some(w), WinogradTileChoice::Auto));
        }
        if coop {
            expected.push(mixed_winograd(w, WinogradTileChoice::F2x2));
        }
    }
    let (adapter_tile, limit) = (ConvTileChoice::Auto.tiling(gpu).tile, gpu.caps.max_workgroup_memory);
    let by_size = [
        "128x128x32x2",
        "128x128x32",
        "128x128x16x2",
        "128x128x16",
        "128x64x32x2",
        "64x128x32x2",
        "128x64x32",
        "64x128x32",
        "128x64x16x2",
        "64x128x16x2",
        "128x64x16",
        "64x128x16",
        "64x64x32x2",
        "64x64x32",
        "64x64x16x2",
        "64x64x16",
    ];
    for tile in by_size.map(|t| t.parse::<TileShape>().unwrap()) {
        if tile != adapter_tile && tile.f32_bytes() <= limit {
            expected.push(ConvSettings { conv_tile: ConvTileChoice::Shape(tile), ..default });
        }
        if tile != adapter_tile && tile.coop_bytes() <= limit && coop {
            expected.push(ConvSettings { conv_tile: ConvTileChoice::Shape(tile), ..MIXED });
        }
    }
    for w in [4, 8, 16] {
        expected.push(f32_setting(Some(w), WinogradTileChoice::F2x2));
        if coop {
            expected.push(mixed_winograd(w, WinogradTileChoice::Auto));
        }
    }
    expected
}

#[test]
fn tuning_times_every_setting_on_one_trainer_and_names_the_fastest() {
    if elasticface_tests::gpu().is_none() {
        return;
    }
    let gpu = Arc::new(Gpu::new(&GpuOptions::from_env()).unwrap());
    let default = f32_setting(Some(8), WinogradTileChoice::Auto);
    let settings = tune_settings(&gpu, &TINY, default);
    assert_eq!(settings, expected_tune_settings(&gpu, default));
    // On an adapter with tensor cores and 48 KiB of workgroup memory (an H200's capabilities; only listed here),
    // mixed precision comes among the baselines, with Winograd, and on each tile.
    let mut h200 = Gpu::new(&GpuOptions::from_env()).unwrap();
    h200.caps.cooperative_matrix = Some(FragmentSide::Sixteen);
    h200.caps.max_workgroup_memory = 48 * 1024;
    let listed = tune_settings(&h200, &TINY, default);
    assert_eq!(listed, expected_tune_settings(&h200, default));
    let head: Vec<String> = listed[..8].iter().map(ConvSettings::to_string).collect();
    let head_expected = [
        "--precision f32 --winograd 8 --winograd-tile auto",
        "--precision f32 --winograd off",
        "--precision mixed",
        "--precision f32 --winograd 4 --winograd-tile auto",
        "--precision mixed --winograd 4 --winograd-tile 2",
        "--precision mixed --winograd 8 --winograd-tile 2",
        "--precision f32 --winograd 16 --winograd-tile auto",
        "--precision mixed --winograd 16 --winograd-tile 2",
    ];
    assert_eq!(head, head_expected);
    assert!(settings.len() >= 12, "6 f32 settings and at least 6 other tiles: {settings:?}");
    assert_eq!(settings[1].to_string(), "--precision f32 --winograd off");
    assert_eq!(default.to_string(), "--precision f32 --winograd 8 --winograd-tile auto");
    assert_eq!(MIXED.to_string(), "--precision mixed");
    let mixed = ConvSettings { winograd: Some(8), winograd_tile: WinogradTileChoice::F2x2, ..MIXED };
    assert_eq!(mixed.to_string(), "--precision mixed --winograd 8 --winograd-tile 2");
    let tiled = ConvSettings { conv_tile: ConvTileChoice::Shape(TileShape::new(128, 128, 16)), ..default };
    assert_eq!(tiled.to_string(), "--precision f32 --winograd 8 --winograd-tile auto --conv-tile 128x128x16");

    // Four of them, timed on one trainer: every layer as Winograd, none, F(2x2) from 8 channels, and the first
    // on another convolution tile.
    let cfg = NetworkBenchConfig { steps: 2, profile: false, ..tiny_bench() };
    let other_tile = ConvTileChoice::Shape(TileShape::new(64, 128, 32));
    let chosen = [
        cfg.setting(),
        settings[1],
        f32_setting(Some(8), WinogradTileChoice::F2x2),
        ConvSettings { conv_tile: other_tile, ..cfg.setting() },
    ];
    let r = tune(gpu.clone(), &cfg, &chosen, None, true).unwrap();
    assert_eq!(r.rows.len(), 4);
    assert!(r.not_measured.is_empty() && r.budget_s.is_none());
    for (row, setting) in r.rows.iter().zip(chosen) {
        assert_eq!(row.setting, setting);
        assert_eq!(row.flags, setting.to_string());
        assert!(row.step_ms_min <= row.step_ms_median && row.step_ms_median <= row.step_ms_max);
        assert!((row.images_per_s - 4.0 / (row.step_ms_median / 1e3)).abs() <= 1e-6 * row.images_per_s);
        let speedup = row.images_per_s / r.rows[0].images_per_s;
        assert!((row.speedup - speedup).abs() <= 1e-12 * speedup, "{row:?}");
        assert!(row.loss_last.is_finite(), "the steps train: {row:?}");
    }
    assert!(r.rows[0].default && r.rows[1..].iter().all(|row| !row.default));
    // Each setting really was in force: the Winograd workspace comes and goes with it.
    assert!(r.rows[1].memory < r.rows[0].memory && r.rows[1].memory < r.rows[2].memory, "{:?}", r.rows);
    let best = r.rows.iter().map(|row| row.images_per_s).fold(0.0, f64::max);
    assert_eq!(r.rows[r.fastest].images_per_s, best);
    let table = r.to_string();
    assert!(table.contains(&format!("fastest: {}", r.rows[r.fastest].flags)), "{table}");
    assert!(table.contains("(default)"), "{table}");
    assert!(r.failed.is_empty(), "{:?}", r.failed);

    // A spent budget: the default still runs (it is the baseline), the others are listed as not measured.
    let r = tune(gpu.clone(), &cfg, &chosen, Some(Duration::ZERO), true).unwrap();
    assert_eq!(r.rows.len(), 1);
    assert_eq!(r.rows[0].setting, chosen[0]);
    assert_eq!(r.not_measured, chosen[1..].iter().map(ConvSettings::to_string).collect::<Vec<_>>());
    assert_eq!(r.budget_s, Some(0.0));
    let table = r.to_string();
    assert!(table.contains("not measured within the budget of 0 s: 3"), "{table}");
    assert!(table.contains(&format!("\n  {}\n", chosen[3])), "{table}");

    // A setting the adapter cannot run (a tile larger than its workgroup memory, where there is one: lavapipe
    // has 32 KiB) is reported, and the settings after it are measured.
    if let Some(&tile) = TileShape::ALL.iter().find(|t| t.f32_bytes() > gpu.caps.max_workgroup_memory) {
        let too_big = ConvSettings { conv_tile: ConvTileChoice::Shape(tile), ..cfg.setting() };
        let r = tune(gpu.clone(), &cfg, &[cfg.setting(), too_big, settings[1]], None, true).unwrap();
        assert_eq!(r.rows.iter().map(|row| row.setting).collect::<Vec<_>>(), [cfg.setting(), settings[1]]);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].setting, too_big);
        assert!(r.failed[0].error.contains("bytes of workgroup memory"), "{:?}", r.failed);
        let table = r.to_string();
        assert!(table.contains(&format!("{} failed: ", too_big)), "{table}");
        // A default that cannot run is listed too; the trainer is built in the next setting, which is the baseline
        // of the speed-ups, and the budget waits for a measured row.
        let r = tune(gpu.clone(), &cfg, &[too_big, settings[1], cfg.setting()], Some(Duration::ZERO), true).unwrap();
        assert_eq!(r.rows.iter().map(|row| row.setting).collect::<Vec<_>>(), [settings[1]]);
        assert!(!r.rows[0].default && r.rows[0].speedup == 1.0, "{:?}", r.rows);
        assert_eq!(r.failed.iter().map(|f| f.setting).collect::<Vec<_>>(), [too_big]);
        assert_eq!(r.not_measured, [cfg.setting().to_string()]);
        let table = r.to_string();
        assert!(table.contains(&format!("(1.00x {} (the default failed))", settings[1])), "{table}");
        // Nothing that runs: an error that says why for each.
        let Err(e) = tune(gpu.clone(), &cfg, &[too_big], None, true) else { panic!("refused") };
        let e = format!("{e:#}");
        assert!(e.contains("no setting could run") && e.contains("bytes of workgroup memory"), "{e}");
    }
}
