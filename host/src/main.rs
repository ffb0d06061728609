//! The `elasticface` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use elasticface::checkpoint::Backbone;
use elasticface::gpu::kernels::conv2d::ConvTileChoice;
use elasticface::gpu::kernels::winograd::WinogradTileChoice;
use elasticface::gpu::{adapters, AdapterLine, Gpu, GpuOptions};
use elasticface::train::cpu::Threads;
use elasticface::train::run::{train, Device, InitHead, Precision, TrainConfig, WinogradLayers};
use elasticface::{bench, selftest};

/// ElasticFace: train and check face-recognition networks with elastic margin losses.
#[derive(Parser, Debug)]
// A flag given twice counts as given last, so that a script may append its overrides to a command line.
#[command(name = "elasticface", version, about, long_about = None, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train and prove a face model in minutes, with no download: the first thing to run.
    ///
    /// Generates the synthetic-faces identity set (or reuses it), trains a small iResNet with ElasticFace-Arc+
    /// on the GPU (or the CPU reference where there is none), measures verification on held-out identities
    /// before and after training, and writes the checkpoint, metrics.jsonl and demo.png (loss and ROC curves).
    /// Scale it up with --ids, --size, --arch, --steps; compare losses on the same seed with --loss.
    Demo(elasticface::demo::DemoConfig),
    /// Train an iResNet with an ElasticFace (or ArcFace/CosFace) head on insightface RecordIO or an image folder.
    ///
    /// Defaults follow the released ElasticFace recipe: r100, 512-d, ElasticFace-Arc+, SGD momentum 0.9,
    /// weight decay 5e-4, lr 0.1 x batch/512 decayed x0.1 at epochs 8, 14, 20, 25 of 26, backbone gradient norm
    /// clipped at 5, random horizontal flips. Every key can also come from a TOML file (`--config`); flags win.
    /// Ctrl-C or SIGTERM saves a checkpoint before stopping; `--resume OUT` continues exactly where it stopped. In a
    /// fine-tuning run's imprint (before its first step), it keeps the imprint's progress instead, which the same
    /// command carries on from.
    Train(Box<TrainArgs>),
    /// How training runs went, from their folders alone (while they train, or after): each run's steps, epoch,
    /// speed, loss at the start and now, and each verification set's first, last and best accuracy; and
    /// training.png/.svg: the loss and the accuracies over the steps, several runs on the same axes.
    ///
    /// Reads each RUN's metrics.jsonl, config.toml, best.safetensors and a fine-tuning run's imprint.safetensors
    /// (how far its imprint got); needs no data, model or GPU.
    Report(Box<elasticface::report::ReportArgs>),
    /// Verification on insightface packs (lfw, cfp_fp, agedb_30, calfw, cplfw .bin) and IJB-B/C: 10-fold
    /// accuracy, TAR at FAR, thresholds; a table, OUT/report.json and ROC plots OUT/roc.png, OUT/roc.svg.
    ///
    /// Each image and its mirror image are embedded and fused (l2normalize(e + e_flip)); distances are squared L2;
    /// the 10-fold protocol is insightface's, computed by the core bit for bit as the numpy reference.
    ///
    /// With --ijb, IJB-B and IJB-C as insightface's eval_ijbc.py measures them: faces aligned from their five
    /// landmarks, (e + e_flip) weighted by the detector score, templates of media means, TAR at FAR 1e-6 .. 1e-1;
    /// and, where the set has the 1:N lists, 1:N identification as ijb_evals.py: rank 1/5/10, TPIR at FPIR.
    Eval(Box<elasticface::commands::EvalArgs>),
    /// Embeddings of images (files or folders) to a .npy or .safetensors file, with the list of files.
    Embed(Box<elasticface::commands::EmbedArgs>),
    /// Compare two face images: the cosine of their flip-fused embeddings and the same/different decision.
    Compare(Box<elasticface::commands::CompareArgs>),
    /// Enrol people in a gallery file for `identify`: each person's photos embedded (with their mirror images) and
    /// averaged into one unit template.
    ///
    /// Each folder given holds people: a sub-folder per person (named by it, every image under it) or an image
    /// per person (named by its file stem). --update adds people to an existing gallery, or replaces them; a person
    /// none of whose images can be read (with --skip-bad-images) is not enrolled.
    Enroll(Box<elasticface::commands::EnrollArgs>),
    /// Who is this? Each probe photo searched in a gallery made by `enroll`: the best candidates by cosine, and
    /// the person shown where the best reaches --threshold.
    ///
    /// The search is the core's gallery, the code a device runs (--int8: as a device with int8 embeddings);
    /// --out writes every candidate to CSV or JSON.
    Identify(Box<elasticface::commands::IdentifyArgs>),
    /// What a gallery file made by `enroll` holds: its model and its people with their image counts; --remove NAME
    /// takes people out of it.
    Gallery(Box<elasticface::commands::GalleryArgs>),
    /// Align face photos from their five landmarks into the crops networks take (insightface's 112x112
    /// alignment: a similarity onto its reference points, bilinear), for embed, compare or a training folder.
    ///
    /// The list is insightface's landmark format (IJB's *_name_5pts_score.txt reads as it is). Crops keep the
    /// photos' relative paths, so one folder per identity stays an image-folder data set.
    Align(Box<elasticface::commands::AlignArgs>),
    /// Export a model to ONNX as insightface publishes them: input `data` (N, 3, H, W) float32, RGB scaled
    /// (x/255 - 0.5)/0.5; output `embedding` (N, E) before normalisation.
    Export(Box<elasticface::commands::ExportArgs>),
    /// Import an insightface/ElasticFace PyTorch state dict (.pth) into a backbone file (.safetensors).
    ///
    /// The network is inferred from the tensor shapes (or given with --arch ...); every tensor is checked. The
    /// result works with eval, embed, compare and export.
    Import(Box<elasticface::commands::ImportArgs>),
    /// List the GPU adapters, the one elasticface would use, its features and limits.
    ///
    /// `WGPU_BACKEND` (vulkan, metal, dx12) restricts the backends; `--adapter` or `WGPU_ADAPTER_NAME` picks an
    /// adapter by (part of) its name.
    Info {
        /// Use the first adapter whose name contains this (case-insensitive).
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
    },
    /// Measure throughput: whole training steps on the GPU (default), each kernel (--kernels), or the input
    /// pipeline on the CPU (--data).
    ///
    /// Default: builds the GPU trainer for --arch at --batch with --classes and runs --warmup untimed, then --steps
    /// timed training steps on synthetic images (upload, whole step, report read-back: what `train` does per step,
    /// without the data loader). Prints images/s over the median step, the GPU time per kernel from timestamp
    /// queries (one extra profiled step, where the adapter has them) and the GPU memory the trainer holds.
    ///
    /// --kernels: GFLOP/s of each kernel on iResNet shapes; each runs once to warm up, then in rounds of --reps
    /// launches recorded into one compute pass; the median round is reported. Every convolution kernel is timed:
    /// direct and Winograd in f32 (both tiles), and in mixed precision (F(2x2)) where the adapter has tensor cores;
    /// --precision, --winograd and --winograd-tile do not apply (--conv-tile does).
    ///
    /// --kernels --cpu: the CPU reference's convolutions (what `--device cpu` trains with) on the same shapes, on
    /// --threads threads, timed the same way (rounds of --reps runs, the median round); no GPU needed.
    ///
    /// --tune: the same steps in each setting of the convolutions that `train` offers (--precision, --winograd,
    /// --winograd-tile, --conv-tile; mixed precision, with and without Winograd, where the adapter has tensor
    /// cores) on one trainer, fastest first, and the flags of the fastest: which settings suit this GPU and
    /// network. A setting the adapter cannot run, or whose losses are not finite, is listed with the reason;
    /// --budget SECONDS bounds the time (the most telling settings come first).
    ///
    /// --peer COMMAND (with the default or --tune): then runs another trainer's benchmark on the same GPU, e.g.
    /// PyTorch's `python3 torch_iresnet_bench.py train`, and prints our images/s (the fastest setting with --tune)
    /// against each of its configurations at the same network and batch: two trainers measured in one run.
    ///
    /// --data PATH: decodes a dataset (.rec, image folder) through the training loader on --workers threads,
    /// with no GPU: images/s in all, per thread, and of one thread decoding alone.
    Bench {
        /// Time each kernel family instead of whole steps.
        #[arg(long, conflicts_with = "data")]
        kernels: bool,
        /// --kernels: time the CPU reference's convolutions instead of the GPU's kernels.
        #[arg(long, requires = "kernels")]
        cpu: bool,
        /// --kernels --cpu: threads of the CPU reference (default: one a core the process may use).
        #[arg(long, value_name = "N", requires = "cpu")]
        threads: Option<usize>,
        /// Time whole steps in every setting of the convolutions (direct, Winograd from each width of the
        /// network with either tile choice, the default on every other convolution tile that fits, mixed precision
        /// on every tile that fits where the adapter has tensor cores), --warmup and --steps each, and print them
        /// fastest first.
        #[arg(long, conflicts_with_all = ["kernels", "data", "precision", "winograd", "winograd_tile", "conv_tile"])]
        tune: bool,
        /// --tune: start no new setting after this many seconds (the trainer's build included; the settings come
        /// most telling first) and list those not measured, so that a peer after it still runs in a time limit.
        #[arg(long, value_name = "SECONDS", requires = "tune")]
        budget: Option<f64>,
        /// Time the input pipeline on this dataset (RecordIO .rec with its .idx, or an image folder).
        #[arg(long, value_name = "PATH")]
        data: Option<PathBuf>,
        /// Network: r18, r34, r50, r100, r200.
        #[arg(long, default_value = "r100")]
        arch: String,
        /// Input size (square).
        #[arg(long, default_value_t = 112)]
        input_size: usize,
        /// Batch size (default: 128; 8 with --kernels).
        #[arg(long)]
        batch: Option<usize>,
        /// Classes of the margin head (85,742: MS1MV2).
        #[arg(long, default_value_t = 85_742)]
        classes: usize,
        /// Loss (the margin head's cost barely depends on it).
        #[arg(long, default_value = "elastic-arc")]
        loss: String,
        /// Timed training steps.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Skip the profiled step (per-kernel GPU times).
        #[arg(long)]
        no_profile: bool,
        /// Arithmetic of the convolutions: auto (f32, the faster today), f32 or mixed (tensor cores; emulated,
        /// slowly, where there are none and ELASTICFACE_EMULATE_TENSOR_CORES=1).
        #[arg(long, value_enum, default_value = "auto")]
        precision: Precision,
        /// 3x3 stride-1 convolutions run as Winograd (in mixed precision F(2x2)'s products on tensor cores, F(4x4)'s
        /// in f32): auto (in f32, layers of at least 128 channels on a GPU, 64 on a CPU adapter; in mixed
        /// precision, none), off, or the fewest input and output channels of such a layer.
        #[arg(long, value_name = "auto|off|N", default_value = "auto")]
        winograd: WinogradLayers,
        /// The Winograd tile: 4 (F(4x4, 3x3): 2.25 multiplications per output), 2 (F(2x2, 3x3): 4, and 5-9x
        /// smaller rounding errors), or auto (4 where a layer's batch has at least 64 output tiles, else 2).
        #[arg(long, value_name = "auto|2|4", default_value = "auto")]
        winograd_tile: WinogradTileChoice,
        /// The workgroup tile of the convolutions, ROWSxCOLSxDEPTH (rows and columns 64 or 128, depth 16 or 32),
        /// with x2 appended for double-buffered tiles (one barrier per depth step instead of two, twice the
        /// workgroup memory), or auto (the adapter's: 128x64x16 on a GPU, 64x64x16 on a CPU adapter).
        #[arg(long, value_name = "auto|RxCxD[x2]", default_value = "auto")]
        conv_tile: ConvTileChoice,
        /// --kernels: divide the spatial sizes of the 112x112 network by this (default: 4 on a CPU adapter and with
        /// --cpu, else 1).
        #[arg(long)]
        shrink: Option<usize>,
        /// --kernels: launches per timed round.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// --data: images to time.
        #[arg(long, default_value_t = 4096)]
        images: usize,
        /// --data: loader threads (default: the CPU cores).
        #[arg(long)]
        workers: Option<usize>,
        /// After our steps, run this peer benchmark on the same GPU (a shell command printing one JSON line per
        /// configuration with img_per_s, arch, batch, mode; e.g. "python3 torch_iresnet_bench.py train") and print
        /// our images/s against each of its configurations at our network and batch.
        #[arg(long, value_name = "COMMAND", conflicts_with_all = ["kernels", "data"])]
        peer: Option<String>,
        /// Print JSON instead of a table (one object; JSON lines with --kernels; with --peer, {"ours", "peer"}).
        #[arg(long)]
        json: bool,
        /// Use the first adapter whose name contains this (case-insensitive).
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
        /// Seed of the weights and the synthetic data.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Generate the synthetic-faces identity set: RecordIO for training, held-out identities, a verification pack.
    ///
    /// Faces are rendered procedurally from the seed (same seed, same bytes on every machine): each identity has
    /// fixed traits (face shape, skin, hair, eyes, brows, nose, mouth, marks, glasses), each image varies pose,
    /// expression, lighting, colour cast, background, occlusion, blur and noise. Writes OUT/train (train.rec,
    /// train.idx, property), OUT/val (held-out identities, same format), OUT/val.bin (insightface pairs) and
    /// OUT/ijb (an IJB-style set of the held-out identities: loose crops, landmarks, templates, 1:1 and 1:N lists).
    Synth {
        /// Output folder.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Training identities.
        #[arg(long, default_value_t = 200)]
        ids: usize,
        /// Images per training identity.
        #[arg(long, default_value_t = 20)]
        per_id: usize,
        /// Held-out identities.
        #[arg(long, default_value_t = 50)]
        val_ids: usize,
        /// Images per held-out identity.
        #[arg(long, default_value_t = 10)]
        val_per_id: usize,
        /// Pairs in val.bin (half of them the same person).
        #[arg(long, default_value_t = 1000)]
        val_pairs: usize,
        /// Image height and width (a multiple of 16).
        #[arg(long, default_value_t = 112)]
        size: usize,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Check this build against the PyTorch reference vectors, tensor by tensor.
    ///
    /// Prints each tensor's largest absolute error and its error relative to the tensor's scale, the
    /// tolerance, and PASS or FAIL; exits non-zero when anything fails.
    ///
    /// By default the GPU runs them: the margin head's kernels on every loss and the GPU trainer on three steps of a
    /// tiny iResNet (the verification protocol has no GPU part and runs on the CPU). `--cpu` checks the CPU
    /// reference (the core) instead.
    Selftest {
        /// Run the reference through the CPU reference implementation (the core) instead of the GPU.
        #[arg(long)]
        cpu: bool,
        /// Check the reference files in DIR (margin_loss, iresnet_tiny, verification .safetensors) instead of
        /// the bundled ones.
        #[arg(long, value_name = "DIR")]
        reference: Option<PathBuf>,
        /// Use the first GPU adapter whose name contains this (case-insensitive).
        #[arg(long, value_name = "NAME", conflicts_with = "cpu")]
        adapter: Option<String>,
        /// The GPU trainer's convolutions: auto (f32, the faster today), f32 or mixed (tensor cores; checked
        /// with mixed precision's looser tolerances).
        #[arg(long, value_enum, default_value = "auto", conflicts_with = "cpu")]
        precision: Precision,
    },
}

/// `elasticface train` flags; each overrides the same key of `--config`.
#[derive(clap::Args, Debug, Default)]
struct TrainArgs {
    /// TOML file with any of the keys below (their names with `_` for `-`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Training data: a folder with train.rec/train.idx/property, a .rec file, or one sub-folder per identity.
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// Verification accuracy during training (at the start, every --eval-every steps, at the end), on held-out
    /// identities (same formats as --data) or on insightface verification packs: a .bin file, or a folder of them
    /// (e.g. faces_emore: lfw.bin, cfp_fp.bin, agedb_30.bin ...), each scored as `elasticface eval` does. The
    /// backbone whose mean accuracy over the sets is the highest so far is kept as OUT/best.safetensors.
    #[arg(long, value_name = "PATH")]
    val: Option<PathBuf>,
    /// Verification pairs drawn from held-out identities in --val [default: 600].
    #[arg(long)]
    val_pairs: Option<usize>,
    /// Run folder: config.toml, metrics.jsonl, checkpoint.safetensors, final.safetensors and, with --val,
    /// best.safetensors; one that holds a checkpoint is only trained on again with --resume [default: runs/train].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue from a checkpoint file, or from a run folder's latest checkpoint.
    #[arg(long, value_name = "PATH")]
    resume: Option<PathBuf>,
    /// Fine-tune: start from a trained model's backbone (a checkpoint or backbone .safetensors, an insightface or
    /// ElasticFace .pth, or an .onnx from `export`), with a new head for the classes of --data (seeded by --seed)
    /// and zero momentum. The run trains the model's network, but for what --arch (or --layers, --widths),
    /// --embedding and --input-size say: the blocks and widths must be the model's, while another embedding or input
    /// size starts its `fc` (and `features`) seeded, e.g. a 128-d model from a 512-d one. README -> Fine-tuning
    /// has measured learning rates. With --resume, the checkpoint's weights are used and the model is not read.
    #[arg(long, value_name = "MODEL")]
    init: Option<PathBuf>,
    /// The class centres a run from --init starts with: imprint (each class's centre the unit mean direction of
    /// its images' embeddings under the model, after one pass of inference over --data: the first loss far lower,
    /// and higher accuracy in README -> Fine-tuning's measurements) or random (seeded, as from scratch; no pass
    /// over --data first) [default: imprint].
    #[arg(long, value_enum)]
    init_head: Option<InitHead>,
    /// Backbone: r18, r34, r50, r100, r200, or custom (with --layers and --widths) [default: r100].
    #[arg(long)]
    arch: Option<String>,
    /// Blocks per stage, e.g. 3,13,30,3 (r100).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    /// Channels per stage, e.g. 64,128,256,512.
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Embedding size [default: 512].
    #[arg(long)]
    embedding: Option<usize>,
    /// Input height and width, a multiple of 16; the images must have it [default: 112].
    #[arg(long)]
    input_size: Option<usize>,
    /// Loss: arcface, cosface, elastic-arc, elastic-cos, elastic-arc-plus, elastic-cos-plus
    /// [default: elastic-arc-plus].
    #[arg(long)]
    loss: Option<String>,
    /// Plus variants only: paper (margins by rank, the paper) or released-code (the released implementation's
    /// indexing, which leaves margins unordered; to reproduce published numbers) [default: paper].
    #[arg(long)]
    plus_assignment: Option<String>,
    /// Images per step, or per micro-batch with --accumulate [default: 128].
    #[arg(long)]
    batch: Option<usize>,
    /// Micro-batches per step (gradient accumulation): each of --batch images runs forward and backward with batch
    /// norm statistics of its own, and one update follows the mean of their gradients, as N GPUs of --batch images
    /// each would make it. The step then takes batch x N images (the learning rate scales with it): the released
    /// recipe (4 GPUs of 128) on one GPU is --batch 128 --accumulate 4 [default: 1].
    #[arg(long, value_name = "N")]
    accumulate: Option<usize>,
    /// Epochs [default: 26].
    #[arg(long)]
    epochs: Option<u64>,
    /// Stop after this many steps in all; 0 means no limit [default: 0].
    #[arg(long)]
    max_steps: Option<u64>,
    /// Base learning rate for a global batch of 512, scaled by the step's images / 512 [default: 0.1].
    #[arg(long)]
    lr: Option<f32>,
    /// step (x0.1 at --decay-epochs) or poly (linear warmup, then power-2 decay) [default: step].
    #[arg(long)]
    schedule: Option<String>,
    /// Epochs, counted from 1, from whose start the step schedule has decayed, as the released config counts
    /// them: 8 trains the 8th epoch (the first seven at the base rate) at a tenth [default: 8,14,20,25].
    #[arg(long, value_delimiter = ',')]
    decay_epochs: Option<Vec<u64>>,
    /// Warmup epochs of the poly schedule [default: 0].
    #[arg(long)]
    warmup_epochs: Option<u64>,
    /// SGD momentum [default: 0.9].
    #[arg(long)]
    momentum: Option<f32>,
    /// Weight decay of backbone and head [default: 5e-4].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Backbone gradient-norm clip [default: 5].
    #[arg(long)]
    clip_norm: Option<f32>,
    /// Seed of weights, margins, data order and flips [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Image decoding threads [default: 4].
    #[arg(long)]
    workers: Option<usize>,
    /// auto (GPU if found, else CPU), gpu, or cpu (the exact, slow reference) [default: auto].
    #[arg(long, value_enum)]
    device: Option<Device>,
    /// Threads of the CPU reference; 0 is one a core the process may use (`taskset` and container limits count).
    /// The losses and weights are the same bits on any number [default: 0].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// GPU arithmetic of the convolutions: auto (f32, the faster today), f32, or mixed (tensor cores: f16
    /// operands, f32 accumulation, dynamic loss scaling; activations stored as f16, half the memory)
    /// [default: auto].
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// 3x3 stride-1 GPU convolutions run as Winograd (in mixed precision F(2x2)'s products on tensor cores,
    /// F(4x4)'s in f32): auto (in f32, layers of at least 128 channels on a GPU, 64 on a CPU adapter; in mixed
    /// precision, none), off, or the fewest input and output channels of such a layer [default: auto].
    #[arg(long, value_name = "auto|off|N")]
    winograd: Option<WinogradLayers>,
    /// The Winograd tile: 4 (F(4x4, 3x3): 2.25 multiplications per output), 2 (F(2x2, 3x3): 4, and 5-9x smaller
    /// rounding errors), or auto (4 where a layer's batch has at least 64 output tiles, else 2) [default: auto].
    #[arg(long, value_name = "auto|2|4")]
    winograd_tile: Option<WinogradTileChoice>,
    /// The workgroup tile of the GPU convolutions, ROWSxCOLSxDEPTH (rows and columns 64 or 128, depth 16 or 32)
    /// with x2 appended for double-buffered tiles (`elasticface bench --tune` measures them all), or auto (the
    /// adapter's: 128x64x16 on a GPU) [default: auto].
    #[arg(long, value_name = "auto|RxCxD[x2]")]
    conv_tile: Option<ConvTileChoice>,
    /// GPU adapter name filter.
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
    /// Checkpoint every N steps; 0 means only at the end and on interruption [default: 2000].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Held-out verification every N steps; 0 means at the start and end only [default: 0].
    #[arg(long)]
    eval_every: Option<u64>,
    /// Skip and count unreadable samples instead of stopping at the first.
    #[arg(long)]
    skip_bad_samples: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl TrainArgs {
    fn config(&self) -> Result<TrainConfig> {
        // The keys of the config file, to tell a network it sets from the default one.
        let (mut c, keys) = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
                let c: TrainConfig = toml::from_str(&text).with_context(|| format!("{}", p.display()))?;
                let table: toml::Table = toml::from_str(&text).with_context(|| format!("{}", p.display()))?;
                (c, table.keys().cloned().collect())
            }
            None => (TrainConfig::default(), Vec::new()),
        };
        if self.init.is_some() {
            c.init = self.init.clone();
        }
        // Fine-tuning: what the flags and the file leave unset of the network is the model's (the flags below then
        // set the rest).
        if let Some(init) = c.init.clone() {
            let flag = |key: &str| match key {
                "arch" => self.arch.is_some(),
                "layers" => self.layers.is_some(),
                "widths" => self.widths.is_some(),
                "embedding" => self.embedding.is_some(),
                "input_size" => self.input_size.is_some(),
                _ => false,
            };
            let given = |key: &str| flag(key) || keys.iter().any(|k| k == key);
            let backbone = Backbone::open(&init, None, None).with_context(|| format!("--init {}", init.display()))?;
            c = c.with_unset_network_of(&backbone.cfg, given).with_context(|| format!("--init {}", init.display()))?;
            eprintln!("fine-tuning {}: {}", init.display(), backbone.describe());
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(data, out, arch, embedding, input_size, loss, plus_assignment, batch, epochs, max_steps, lr, schedule);
        set!(decay_epochs, warmup_epochs, momentum, weight_decay, clip_norm, seed, workers, device, checkpoint_every);
        set!(eval_every, val_pairs, precision, winograd, winograd_tile, conv_tile, accumulate, threads, init_head);
        if self.val.is_some() {
            c.val = self.val.clone();
        }
        if self.adapter.is_some() {
            c.adapter = self.adapter.clone();
        }
        let four = |v: &Vec<usize>| -> Result<[usize; 4]> {
            v.as_slice().try_into().map_err(|_| anyhow::anyhow!("--layers and --widths take 4 numbers"))
        };
        if let Some(l) = &self.layers {
            c.layers = Some(four(l)?);
        }
        if let Some(w) = &self.widths {
            c.widths = Some(four(w)?);
        }
        c.skip_bad_samples |= self.skip_bad_samples;
        if c.data.as_os_str().is_empty() {
            bail!("no training data: give --data PATH (or `data` in --config)");
        }
        Ok(c)
    }
}

fn main() -> ExitCode {
    quiet_vulkan_loader();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Eval(args) => args.run(),
        Command::Embed(args) => args.run(),
        Command::Compare(args) => args.run(),
        Command::Enroll(args) => args.run(),
        Command::Identify(args) => args.run(),
        Command::Gallery(args) => args.run(),
        Command::Report(args) => args.run(),
        Command::Align(args) => args.run(),
        Command::Export(args) => args.run(),
        Command::Import(args) => args.run(),
        Command::Demo(cfg) => {
            let r = elasticface::demo::demo(&cfg)?;
            let s = &r.run;
            println!(
                "elasticface demo: {} ({} training identities, {}x{} images)",
                cfg.loss, cfg.ids, cfg.size, cfg.size
            );
            println!(
                "  steps            {} x {} images in {:.1} s ({:.0} images/s)",
                s.steps, cfg.batch, s.seconds, s.images_per_second
            );
            println!("  loss             {:.3} -> {:.3}", s.first_loss, s.last_loss);
            if let (Some(b), Some(a)) =
                (s.val_before.first().map(|r| &r.report), s.val_after.first().map(|r| &r.report))
            {
                println!("  held-out pairs   {} ({} identities never seen in training)", a.pairs, cfg.val_ids);
                println!(
                    "  verification     {:.1}% -> {:.1}% (10-fold accuracy)",
                    100.0 * b.accuracy,
                    100.0 * a.accuracy
                );
                let tar = |v: &elasticface::eval::VerifyReport| {
                    v.tar(1e-2).map_or("n/a".to_string(), |t| format!("{:.1}%", 100.0 * t))
                };
                println!("  TAR at FAR 1e-2  {} -> {}", tar(b), tar(a));
            }
            println!(
                "wrote {}, {}, {}",
                s.checkpoint.display(),
                cfg.out.join(elasticface::train::run::METRICS_FILE).display(),
                r.picture.display()
            );
            println!("next:");
            // synth writes the held-out identities as an IJB set beside the pack (a data folder made before it
            // did holds none).
            let ijb = r.val_bin.with_file_name("ijb");
            let ijb =
                if elasticface::eval::ijb::is_ijb(&ijb) { format!(" --ijb {}", ijb.display()) } else { String::new() };
            println!(
                "  elasticface eval --model {} --bin {}{ijb}",
                cfg.out.join("final.safetensors").display(),
                r.val_bin.display()
            );
            println!(
                "  elasticface embed --model {} IMAGES... --out embeddings.npy",
                cfg.out.join("final.safetensors").display()
            );
            println!("  elasticface report {}  (the run in figures, and training.png)", cfg.out.display());
            println!(
                "  elasticface train --data YOUR/train.rec --val YOUR/val  (insightface RecordIO or image folders)"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Synth { out, ids, per_id, val_ids, val_per_id, val_pairs, size, seed, quiet } => {
            let cfg = elasticface::synth::SynthConfig {
                out,
                ids,
                per_id,
                val_ids,
                val_per_id,
                val_pairs,
                size,
                seed,
                quality: 95,
            };
            let o = elasticface::synth::synth(&cfg, quiet)?;
            println!(
                "wrote {} images: {} (training), {} (held-out), {} ({val_pairs} pairs), {} (the held-out identities as \
                 an IJB set)",
                o.images,
                o.train.display(),
                o.val.display(),
                o.val_bin.display(),
                o.ijb.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(args) => {
            let cfg = args.config()?;
            let s = train(&cfg, args.resume.as_deref(), args.quiet)?;
            if let Some((read, of)) = s.stopped_imprinting {
                println!(
                    "interrupted while imprinting the class centres: {read} of {of} images read, kept in {}; the same \
                     command carries on from there",
                    cfg.out.join(elasticface::train::imprint::FILE).display()
                );
                return Ok(ExitCode::from(130));
            }
            let state = if s.interrupted { "interrupted" } else { "done" };
            println!(
                "{state}: {} steps, loss {:.4} -> {:.4}, {:.1} s, {:.1} images/s",
                s.steps, s.first_loss, s.last_loss, s.seconds, s.images_per_second
            );
            for (a, b) in s.val_before.iter().zip(&s.val_after) {
                println!(
                    "{} verification: {:.2}% -> {:.2}% ({} pairs)",
                    b.set,
                    100.0 * a.report.accuracy,
                    100.0 * b.report.accuracy,
                    b.report.pairs
                );
            }
            if s.skipped_samples > 0 {
                println!("left out {} unreadable samples (counted in every epoch that read them)", s.skipped_samples);
            }
            println!("checkpoint: {}", s.checkpoint.display());
            if let Some((path, b)) = &s.best {
                println!(
                    "best: {} (step {}, mean verification accuracy {:.2}%)",
                    path.display(),
                    b.step,
                    100.0 * b.mean_accuracy
                );
            }
            if s.interrupted {
                println!("continue with: elasticface train --resume {} (and the same flags)", cfg.out.display());
                return Ok(ExitCode::from(130));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { adapter } => {
            let found = adapters();
            println!("adapters ({}):", found.len());
            for a in &found {
                println!("  {}", AdapterLine(a.clone()));
            }
            let mut opts = GpuOptions::from_env();
            opts.adapter_name = adapter.or(opts.adapter_name);
            let gpu = Gpu::new(&opts)?;
            println!("chosen: {}", AdapterLine(gpu.info.clone()));
            println!("{}", gpu.caps);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            kernels,
            cpu,
            threads,
            tune,
            budget,
            data,
            arch,
            input_size,
            batch,
            classes,
            loss,
            steps,
            warmup,
            no_profile,
            precision,
            winograd,
            winograd_tile,
            conv_tile,
            shrink,
            reps,
            images,
            workers,
            peer,
            json,
            adapter,
            seed,
        } => {
            if let Some(path) = data {
                let workers =
                    workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
                let cfg = bench::data::DataBenchConfig { images, batch: batch.unwrap_or(128), workers, seed };
                let r = bench::data::measure(&path, &cfg)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    bench::data::print_table(&r);
                }
                return Ok(ExitCode::SUCCESS);
            }
            // --kernels: a table (or JSON lines), a row as each kernel is timed.
            let header = || {
                if !json {
                    println!("{:<28} {:<32} {:>10} {:>10} {:>9}", "kernel", "shape", "ms", "GFLOP/s", "GB/s");
                }
            };
            let row = |r: &bench::kernels::KernelResult| -> Result<()> {
                if json {
                    println!("{}", serde_json::to_string(r)?);
                } else {
                    println!("{:<28} {:<32} {:>10.3} {:>10.2} {:>9.2}", r.kernel, r.shape, r.ms, r.gflops, r.gbytes);
                }
                Ok(())
            };
            if cpu {
                let exec = threads.map_or_else(Threads::per_core, Threads::new);
                let (batch, shrink) = (batch.unwrap_or(8), shrink.unwrap_or(4).max(1));
                eprintln!("CPU reference on {exec} (shapes: batch {batch}, spatial / {shrink})");
                header();
                for r in bench::kernels::cpu_conv_results(&exec, batch, shrink, reps.max(1), 3)? {
                    row(&r)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut opts = GpuOptions::from_env();
            opts.adapter_name = adapter.or(opts.adapter_name);
            let gpu = Gpu::new(&opts)?;
            if kernels {
                let batch = batch.unwrap_or(8);
                let shrink = shrink.unwrap_or(if gpu.info.device_type == wgpu::DeviceType::Cpu { 4 } else { 1 });
                let tile = conv_tile.tiling(&gpu).tile;
                eprintln!(
                    "adapter: {} (shapes: batch {batch}, spatial / {shrink}; convolution tiles {tile})",
                    AdapterLine(gpu.info.clone())
                );
                header();
                for case in bench::kernels::kernel_cases(&gpu, batch, shrink.max(1), conv_tile)? {
                    row(&bench::kernels::time_case(&gpu, &case, reps.max(1), 3)?)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let tc = TrainConfig { arch: arch.clone(), input_size, loss, ..TrainConfig::default() };
            let precision = precision.resolve(&gpu)?;
            let cfg = bench::network::NetworkBenchConfig {
                precision,
                winograd: winograd.resolve(&gpu, precision),
                winograd_tile,
                conv_tile,
                cfg: tc.network()?,
                arch,
                batch: batch.unwrap_or(128),
                classes,
                margin: tc.margin()?,
                warmup,
                steps,
                profile: !no_profile,
                seed,
            };
            // Ours first; the trainer and the device are released before a peer runs.
            let (ours, (flags, images_per_s, memory)) = if tune {
                let settings = bench::network::tune_settings(&gpu, &cfg.cfg, cfg.setting());
                let budget = budget
                    .map(|s| {
                        std::time::Duration::try_from_secs_f64(s)
                            .map_err(|e| anyhow::anyhow!("--budget {s}: not a number of seconds ({e})"))
                    })
                    .transpose()?;
                let r = bench::network::tune(std::sync::Arc::new(gpu), &cfg, &settings, budget, false)?;
                let best = &r.rows[r.fastest];
                let compared = (best.flags.clone(), best.images_per_s, best.memory);
                (BenchOutput::new(&r, json)?, compared)
            } else {
                let r = bench::network::measure(std::sync::Arc::new(gpu), &cfg, false)?;
                let compared = (cfg.setting().to_string(), r.images_per_s, r.memory.total);
                (BenchOutput::new(&r, json)?, compared)
            };
            let Some(command) = peer else {
                println!("{}", ours.text);
                return Ok(ExitCode::SUCCESS);
            };
            if !json {
                println!("{}\n", ours.text);
            }
            eprintln!("running the peer: {command}");
            let compared = bench::peer::run(&command).and_then(|stdout| {
                bench::peer::compare(&command, &flags, images_per_s, memory, &cfg.arch, cfg.batch, &stdout)
            });
            let c = match compared {
                Ok(c) => c,
                Err(e) => {
                    if json {
                        println!("{}", ours.text); // our figures are not lost with the peer
                    }
                    return Err(e);
                }
            };
            if json {
                let both = serde_json::json!({ "ours": ours.value, "peer": c });
                println!("{}", serde_json::to_string_pretty(&both)?);
            } else {
                println!("{c}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Selftest { cpu, reference, adapter, precision } => {
            let files = selftest::load(reference.as_deref())?;
            let (report, on) = if cpu {
                (selftest::run_cpu(&files), "cpu".to_string())
            } else {
                let mut opts = GpuOptions::from_env();
                opts.adapter_name = adapter.or(opts.adapter_name);
                let gpu = Gpu::new(&opts).map_err(|e| {
                    e.context("the selftest runs on the GPU; `elasticface selftest --cpu` checks the CPU reference")
                })?;
                let precision = precision.resolve(&gpu)?;
                (selftest::run_gpu(&files, &gpu, precision), format!("gpu: {} ({precision:?})", gpu.info.name))
            };
            for section in &report.sections {
                println!("{}", section.file);
                for check in &section.checks {
                    println!("  {check}");
                }
            }
            let (all, failed) = report.counts();
            if report.passed() {
                println!("selftest ({on}): {all} checks, all passed");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("selftest ({on}): {failed} of {all} checks FAILED");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// The Vulkan loader complains on every start when `XDG_RUNTIME_DIR` is unset (containers, CI): give it a private
/// folder. Runs first in `main`, before any other thread exists.
fn quiet_vulkan_loader() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let dir = std::env::temp_dir().join("elasticface-runtime");
    if std::fs::create_dir_all(&dir).is_ok() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

/// A bench result as a JSON value, and as the text to print: pretty JSON with `--json`, else its table.
struct BenchOutput {
    value: serde_json::Value,
    text: String,
}

impl BenchOutput {
    fn new<T: serde::Serialize + std::fmt::Display>(r: &T, json: bool) -> Result<Self> {
        let value = serde_json::to_value(r)?;
        // Printed from `r` itself, so that the JSON keeps the fields in their declared order.
        let text = if json { serde_json::to_string_pretty(r)? } else { r.to_string() };
        Ok(Self { value, text })
    }
}
