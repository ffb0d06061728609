//! The model commands of `elasticface`: `eval`, `embed`, `compare`, `enroll`, `identify`, `gallery`, `export` and
//! `import`, and `align`, as clap argument structs with a `run` each (the binary only dispatches to them).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use elasticface_core::model::IResNetConfig;
use elasticface_core::nn::ImageShape;
use serde_json::json;

use crate::checkpoint::Backbone;
use crate::embed::{self, EmbedOptions};
use crate::eval::ijb;
use crate::eval::suite::{self, EvalReport};
use crate::identify::{self, Found, Gallery};
use crate::train::run::{open_inference, Device, TrainConfig};
use crate::train::Backend;

/// The network of a model file that has no manifest (a PyTorch `.pth`); inferred from the shapes when not given.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NetworkArgs {
    /// Backbone of a file without a manifest (.pth): r18, r34, r50, r100, r200, or custom (with --layers and
    /// --widths). Inferred from the tensor shapes when absent.
    #[arg(long)]
    pub arch: Option<String>,
    /// Blocks per stage, with --arch.
    #[arg(long, value_delimiter = ',', num_args = 4)]
    pub layers: Option<Vec<usize>>,
    /// Channels per stage, with --arch.
    #[arg(long, value_delimiter = ',', num_args = 4)]
    pub widths: Option<Vec<usize>>,
    /// Embedding size, with --arch [default: 512].
    #[arg(long)]
    pub embedding: Option<usize>,
    /// Input height and width; with --arch [default: 112], or alone to fix the input size of an inferred network
    /// (the shapes only tell it for square inputs).
    #[arg(long)]
    pub input_size: Option<usize>,
}

impl NetworkArgs {
    /// The network the flags describe, if `--arch` is given (built as `elasticface train` builds it).
    pub fn network(&self) -> Result<Option<IResNetConfig>> {
        let Some(arch) = &self.arch else {
            ensure!(
                self.layers.is_none() && self.widths.is_none() && self.embedding.is_none(),
                "--layers, --widths and --embedding describe a network together with --arch"
            );
            return Ok(None);
        };
        let four = |v: &Option<Vec<usize>>| -> Result<Option<[usize; 4]>> {
            v.as_ref()
                .map(|v| v.as_slice().try_into().map_err(|_| anyhow::anyhow!("--layers and --widths take 4 numbers")))
                .transpose()
        };
        let t = TrainConfig {
            arch: arch.clone(),
            layers: four(&self.layers)?,
            widths: four(&self.widths)?,
            embedding: self.embedding.unwrap_or(512),
            input_size: self.input_size.unwrap_or(112),
            ..TrainConfig::default()
        };
        t.network().map(Some)
    }

    /// Loads the model file `path` ([`Backbone::open`]) with these flags.
    pub fn load(&self, path: &std::path::Path) -> Result<Backbone> {
        let cfg = self.network()?;
        Backbone::open(path, cfg, if cfg.is_some() { None } else { self.input_size })
    }
}

/// Where and how models run.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto (GPU if found, else CPU with a warning), gpu, or cpu (the exact, slow reference).
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub device: Device,
    /// GPU adapter name filter.
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,
    /// Threads of the CPU reference; 0 is one a core the process may use (`taskset` and container limits count).
    /// The embeddings are the same bits on any number.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Images embedded at once (lower it for large networks on the CPU).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

impl DeviceArgs {
    fn open(&self, backbone: &Backbone) -> Result<Box<dyn Backend>> {
        open_inference(backbone, self.device, self.adapter.clone(), self.threads, self.batch)
    }
}

/// How a command that embeds image files (`embed`, `enroll`, `identify`) runs: where, what it does with an image
/// it cannot read, and whether it shows progress.
#[derive(clap::Args, Debug, Clone)]
pub struct ImageRunArgs {
    /// Leave out images that cannot be read (each named in a warning) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_images: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl ImageRunArgs {
    /// The embedding options of these flags, with the mirror image and L2 normalisation as given.
    fn options(&self, flip: bool, normalize: bool) -> EmbedOptions {
        EmbedOptions { flip, normalize, quiet: self.quiet, skip_bad: self.skip_bad_images }
    }

    /// Embeddings as the verification protocol fuses them: with the mirror image, L2-normalised.
    fn fused(&self) -> EmbedOptions {
        self.options(true, true)
    }
}

fn input_shape(b: &Backbone) -> ImageShape {
    ImageShape { h: b.cfg.input_h, w: b.cfg.input_w }
}

/// `elasticface eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The model: a checkpoint or backbone (.safetensors), a PyTorch state dict (.pth), or an ONNX file written by
    /// `elasticface export`.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// An insightface verification pack (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin, ...); repeat
    /// for several.
    #[arg(long = "bin", value_name = "FILE")]
    pub bins: Vec<PathBuf>,
    /// Evaluate every *.bin file in this folder (after the --bin files).
    #[arg(long, value_name = "DIR")]
    pub val_dir: Option<PathBuf>,
    /// An IJB-B or IJB-C set (the folder holding loose_crop/ and meta/, e.g. IJB_release/IJBC): 1:1 verification
    /// of templates as insightface's eval_ijbc.py measures it, TAR at FAR 1e-6 .. 1e-1 (the paper reports 1e-4);
    /// where meta/ also holds the 1:N lists (ijbc_1N_gallery_G1.csv, _G2.csv, ijbc_1N_probe_mixed.csv), 1:N
    /// identification too, as ijb_evals.py: rank 1/5/10 and TPIR at FPIR 1e-4 .. 1e-1 per gallery; repeat for both.
    #[arg(long = "ijb", value_name = "DIR")]
    pub ijb: Vec<PathBuf>,
    /// Folder for report.json, roc.png and roc.svg; with --ijb also each set's face features (SET.features, 4 x 512
    /// bytes a face), written as they are embedded: a run stopped by Ctrl-C or a crash resumes from them, and a
    /// rerun with the same model reads them instead of embedding again (delete them to free the space).
    #[arg(long, value_name = "DIR", default_value = "eval")]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl EvalArgs {
    /// Evaluates, prints the table and writes the report and plots.
    pub fn run(&self) -> Result<ExitCode> {
        let report = self.evaluate()?;
        suite::print_table(&report, &mut std::io::stdout().lock())?;
        let out = suite::write_outputs(&report, &self.out)?;
        println!("report: {}\nROC: {}, {}", out.json.display(), out.png.display(), out.svg.display());
        Ok(ExitCode::SUCCESS)
    }

    /// Runs every pack and returns the report (nothing printed or written).
    pub fn evaluate(&self) -> Result<EvalReport> {
        let mut packs = self.bins.clone();
        if let Some(dir) = &self.val_dir {
            packs.extend(suite::packs_in(dir)?);
        }
        if packs.is_empty() && self.ijb.is_empty() {
            bail!("nothing to evaluate: give --bin FILE (repeatable), --val-dir DIR or --ijb DIR");
        }
        // Read every pack and every set's metadata before the first image is embedded: a typo or a malformed pack
        // fails at once, not after the packs before it (the packs are read again, one at a time, as they run).
        for p in &packs {
            crate::eval::bin::VerificationPack::open(p)?;
        }
        let ijb_sets = self.ijb.iter().map(|d| ijb::IjbSet::open(d)).collect::<Result<Vec<_>>>()?;
        let backbone = self.network.load(&self.model)?;
        let mut backend = self.device.open(&backbone)?;
        let shape = input_shape(&backbone);
        let mut sets = Vec::with_capacity(packs.len());
        for p in &packs {
            sets.push(suite::evaluate_pack(backend.as_mut(), p, shape, self.quiet)?);
        }
        let mut ijb_reports = Vec::with_capacity(ijb_sets.len());
        if !ijb_sets.is_empty() {
            std::fs::create_dir_all(&self.out).with_context(|| format!("cannot create {}", self.out.display()))?;
        }
        for set in &ijb_sets {
            let resume = self.out.join(format!("{}.features", set.name));
            let templates = ijb::embed_templates(backend.as_mut(), set, shape, self.quiet, Some(&resume))?;
            ijb_reports.push(ijb::score_set(set, &templates)?);
        }
        Ok(EvalReport {
            model: self.model.clone(),
            network: backbone.describe(),
            device: backend.device(),
            protocol: suite::PROTOCOL,
            sets,
            ijb_protocol: (!ijb_reports.is_empty()).then_some(ijb::IJB_PROTOCOL),
            ijb: ijb_reports,
        })
    }
}

/// `elasticface embed`.
#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// The model (as for `eval`).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Image files and folders (searched recursively for .jpg, .jpeg, .png).
    #[arg(required = true, value_name = "IMAGE_OR_DIR")]
    pub inputs: Vec<PathBuf>,
    /// Output: a .npy file (the image list goes to NAME.files.txt beside it) or a .safetensors file (tensor
    /// `embeddings`, the image list in its manifest); the list names the images embedded (not those skipped with
    /// --skip-bad-images). While it embeds, the embeddings so far are kept in FILE.features: a run stopped by Ctrl-C
    /// or a crash and started again resumes from them.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Add the mirror image's embedding (e + e_flip), as the verification protocol does.
    #[arg(long)]
    pub flip: bool,
    /// L2-normalise each embedding.
    #[arg(long)]
    pub normalize: bool,
    #[command(flatten)]
    pub images: ImageRunArgs,
}

impl EmbedArgs {
    /// Embeds the images and writes the file.
    pub fn run(&self) -> Result<ExitCode> {
        let files = embed::list_images(&self.inputs)?;
        embed::check_output(&self.out, &files)?;
        let backbone = self.network.load(&self.model)?;
        let mut backend = self.images.device.open(&backbone)?;
        let opts = self.images.options(self.flip, self.normalize);
        let resume = embed::resume_path(&self.out);
        let emb = embed::embed_files(backend.as_mut(), &files, input_shape(&backbone), opts, Some(&resume))?;
        let files = emb.kept(&files);
        let about = json!({
            "model": self.model.display().to_string(), "network": backbone.describe(),
            "flip": self.flip, "normalize": self.normalize, "shape": [files.len(), emb.dim],
        });
        embed::write_embeddings(&self.out, &emb, &files, about)?;
        crate::files::remove_if_present(&resume)?;
        println!("{} embeddings of size {} -> {}", files.len(), emb.dim, self.out.display());
        Ok(ExitCode::SUCCESS)
    }
}

/// `elasticface align`.
#[derive(clap::Args, Debug)]
pub struct AlignArgs {
    /// The list: one face a line, the photo's path (relative to --root), its five landmarks as ten numbers x y
    /// (left eye, right eye, nose tip, left and right mouth corner, as seen) and an optional score: insightface's
    /// *_name_5pts_score.txt as it is.
    #[arg(value_name = "LIST")]
    pub list: PathBuf,
    /// The folder the listed paths are relative to [default: the list's folder].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Where the crops go, under the photos' relative paths.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Height and width of the crops (insightface's reference points are for 112, other sizes scale them; 128 and
    /// its multiples place them as insightface does, centred: moved 8/128 of the width right).
    #[arg(long, default_value_t = 112)]
    pub size: usize,
    /// Write JPEG at this quality instead of PNG.
    #[arg(long, value_name = "QUALITY", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg: Option<u8>,
    /// For photos with an EXIF orientation (a phone's): the landmarks are in the pixels as stored (ignore: PIL's
    /// Image.open, IJB's lists) or in the photo turned upright as its tag says (apply: OpenCV's imread, as
    /// insightface's detector scripts read photos).
    #[arg(long, value_enum, default_value_t = crate::align::Exif::Ignore)]
    pub exif: crate::align::Exif,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl AlignArgs {
    /// Aligns every listed face and writes the crops.
    pub fn run(&self) -> Result<ExitCode> {
        let root = match &self.root {
            Some(r) => r.clone(),
            None => crate::align::list_folder(&self.list),
        };
        let cfg = crate::align::AlignConfig {
            list: self.list.clone(),
            root,
            out: self.out.clone(),
            shape: ImageShape { h: self.size, w: self.size },
            jpeg: self.jpeg,
            exif: self.exif,
        };
        let done = crate::align::align_all(&cfg, self.quiet)?;
        if let Some(note) = done.exif_note(self.exif) {
            eprintln!("note: {note}");
        }
        let n = done.faces;
        println!("aligned {n} faces into {}x{} crops under {}", self.size, self.size, self.out.display());
        Ok(ExitCode::SUCCESS)
    }
}

/// `elasticface compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The model (as for `eval`).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// First image.
    pub a: PathBuf,
    /// Second image.
    pub b: PathBuf,
    /// Cosine above which the two are judged the same person. An `eval` report's `best_threshold` t (a
    /// squared distance) is the cosine 1 - t/2; 0.3 is about t = 1.4, typical of insightface r100 models on LFW.
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
    pub threshold: f32,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl CompareArgs {
    /// Prints the cosine and the decision; exits 0 either way.
    pub fn run(&self) -> Result<ExitCode> {
        ensure!((-1.0..=1.0).contains(&self.threshold), "--threshold is a cosine, in [-1, 1]");
        let backbone = self.network.load(&self.model)?;
        let mut backend = self.device.open(&backbone)?;
        let c = embed::compare(backend.as_mut(), &self.a, &self.b, input_shape(&backbone), self.threshold)?;
        println!(
            "cosine {:.4} (squared distance {:.4}): {} at threshold {}",
            c.cosine,
            c.distance,
            if c.same { "same person" } else { "different people" },
            self.threshold
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// `elasticface enroll`.
#[derive(clap::Args, Debug)]
pub struct EnrollArgs {
    /// The model (as for `eval`). Probes must be searched with the same model: the gallery keeps its fingerprint.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Folders of people: each sub-folder is a person named by the sub-folder, with every .jpg, .jpeg and .png
    /// under it; each image directly in the folder is a person of its own, named by its file stem.
    #[arg(required = true, value_name = "DIR")]
    pub people: Vec<PathBuf>,
    /// The gallery file to write (safetensors: the templates and, in its manifest, the names and the model). While
    /// it embeds, the embeddings so far are kept in FILE.features: a run stopped by Ctrl-C or a crash and started
    /// again resumes from them.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Add to the gallery --out holds (made with the same model): new names are appended, a name it holds
    /// already gets the new images' template in its place.
    #[arg(long)]
    pub update: bool,
    #[command(flatten)]
    pub images: ImageRunArgs,
}

impl EnrollArgs {
    /// Embeds the people's images and writes the gallery.
    pub fn run(&self) -> Result<ExitCode> {
        let people = identify::list_people(&self.people)?;
        let files: Vec<PathBuf> = people.iter().flat_map(|p| p.files.iter().cloned()).collect();
        let backbone = self.network.load(&self.model)?;
        let mut gallery = if self.update && self.out.exists() {
            let g = Gallery::open(&self.out)?;
            g.check_model(&self.out, &self.model, &backbone)?;
            g
        } else {
            ensure!(
                !self.out.exists(),
                "{} exists: add --update to add these people to it, or give another --out",
                self.out.display()
            );
            Gallery::new(&self.model, &backbone)
        };
        let mut backend = self.images.device.open(&backbone)?;
        let resume = embed::resume_path(&self.out);
        let opts = self.images.fused();
        let emb = embed::embed_files(backend.as_mut(), &files, input_shape(&backbone), opts, Some(&resume))?;
        let people = identify::readable(&people, &emb)?;
        let files: Vec<PathBuf> = people.iter().flat_map(|p| p.files.iter().cloned()).collect();
        let done = gallery.enroll(&people, &emb)?;
        gallery.save(&self.out)?;
        crate::files::remove_if_present(&resume)?;
        let replaced = if done.replaced > 0 { format!(", {} replaced", done.replaced) } else { String::new() };
        println!(
            "enrolled {} people from {} images ({} new{replaced}) -> {}: {} people",
            people.len(),
            files.len(),
            done.added,
            self.out.display(),
            gallery.len()
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// `elasticface identify`.
#[derive(clap::Args, Debug)]
pub struct IdentifyArgs {
    /// The model the gallery was enrolled with (as for `eval`).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// The gallery file written by `elasticface enroll`.
    #[arg(long, value_name = "FILE")]
    pub gallery: PathBuf,
    /// Probe images: files, or folders searched recursively for .jpg, .jpeg, .png.
    #[arg(required = true, value_name = "IMAGE_OR_DIR")]
    pub probes: Vec<PathBuf>,
    /// The cosine from which the best candidate is taken to be the person shown (accepted at cosine >= threshold,
    /// as the core's gallery decides); the scale of `compare`'s threshold.
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
    pub threshold: f32,
    /// Candidates listed per probe, best first.
    #[arg(long, default_value_t = 1, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub top: u32,
    /// Search int8 templates with int8 probes (each quantised from its unit embedding), as a device with int8
    /// embeddings does: exact integer cosines.
    #[arg(long)]
    pub int8: bool,
    /// Also write every candidate to this file: .csv (probe, rank, name, cosine, accepted) or .json.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The probes are of known people, in folders laid out as for `enroll` (a sub-folder of images, or an image,
    /// per person): also measure 1:N on them. A probe's person is enrolled (mated) or not (non-mated); prints the
    /// identification rate at ranks 1, 5 and 10 and the TPIR at FPIR 1e-4 .. 1e-1 with the --threshold that gives
    /// each (also in the JSON of --out).
    #[arg(long)]
    pub truth: bool,
    #[command(flatten)]
    pub images: ImageRunArgs,
}

impl IdentifyArgs {
    /// Embeds the probes, searches the gallery, prints a line a probe and writes --out.
    pub fn run(&self) -> Result<ExitCode> {
        ensure!((-1.0..=1.0).contains(&self.threshold), "--threshold is a cosine, in [-1, 1]");
        let out = match &self.out {
            Some(out) => match CandidateFormat::of(out) {
                Some(format) => Some((out, format)),
                None => bail!("{}: write the candidates to a .csv or a .json file", out.display()),
            },
            None => None,
        };
        let gallery = Gallery::open(&self.gallery)?;
        let (probes, mates) = if self.truth {
            gallery.known_probes(&self.probes)?
        } else {
            (embed::list_images(&self.probes)?, Vec::new())
        };
        let backbone = self.network.load(&self.model)?;
        gallery.check_model(&self.gallery, &self.model, &backbone)?;
        let mut backend = self.images.device.open(&backbone)?;
        let emb = embed::embed_files(backend.as_mut(), &probes, input_shape(&backbone), self.images.fused(), None)?;
        let (probes, mates) = (emb.kept(&probes), if self.truth { emb.kept(&mates) } else { mates });
        let name = |i: usize| probes[i].display().to_string();
        let found = gallery.search(&emb.values, self.top as usize, self.int8, name)?;
        let evaluation = if self.truth { Some(gallery.evaluate(&emb.values, &mates, self.int8, name)?) } else { None };
        let found = Found {
            gallery: &gallery,
            probes: probes.iter().map(|p| p.display().to_string()).collect(),
            candidates: found,
            threshold: self.threshold,
        };
        let mut stdout = std::io::stdout().lock();
        for line in found.lines() {
            writeln!(stdout, "{line}")?;
        }
        let search = if self.int8 { "int8" } else { "f32" };
        writeln!(
            stdout,
            "{} of {} probes identified among {} people ({search} search, cosine >= {})",
            found.identified(),
            probes.len(),
            gallery.len(),
            self.threshold
        )?;
        for line in evaluation.iter().flat_map(|e| e.lines()) {
            writeln!(stdout, "{line}")?;
        }
        if let Some((out, format)) = out {
            let bytes = match format {
                CandidateFormat::Csv => found.csv().into_bytes(),
                CandidateFormat::Json => {
                    let doc = json!({
                        "gallery": self.gallery.display().to_string(), "model": self.model.display().to_string(),
                        "threshold": self.threshold, "search": search, "probes": found.json(),
                        "evaluation": evaluation,
                    });
                    serde_json::to_vec_pretty(&doc)?
                }
            };
            crate::files::write_atomically(out, &bytes)?;
            writeln!(stdout, "candidates: {}", out.display())?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `elasticface gallery`.
#[derive(clap::Args, Debug)]
pub struct GalleryArgs {
    /// The gallery file written by `elasticface enroll`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Take this person out of the gallery (repeat for several); the file is rewritten, the others keep their
    /// order. A name it does not hold changes nothing and is an error.
    #[arg(long, value_name = "NAME")]
    pub remove: Vec<String>,
}

impl GalleryArgs {
    /// Prints the gallery, after removing people when asked.
    pub fn run(&self) -> Result<ExitCode> {
        let mut gallery = Gallery::open(&self.file)?;
        if !self.remove.is_empty() {
            gallery.remove(&self.remove)?;
            gallery.save(&self.file)?;
            println!("{}: removed {}", self.file.display(), self.remove.join(", "));
        }
        println!("{}: {}", self.file.display(), gallery.describe().join("\n"));
        Ok(ExitCode::SUCCESS)
    }
}

/// The file types `identify --out` writes, by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CandidateFormat {
    Csv,
    Json,
}

impl CandidateFormat {
    fn of(path: &std::path::Path) -> Option<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("csv") => Some(Self::Csv),
            Some("json") => Some(Self::Json),
            _ => None,
        }
    }
}

/// `elasticface export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The model (as for `eval`).
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// The ONNX file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

impl ExportArgs {
    /// Writes the ONNX file.
    pub fn run(&self) -> Result<ExitCode> {
        let backbone = self.network.load(&self.model)?;
        let source = json!({"exported_from": self.model.display().to_string()});
        let bytes = crate::onnx::export_to(&backbone, source, &self.out)?;
        let c = &backbone.cfg;
        println!(
            "{} ({bytes} bytes): input `{}` float32 (N, 3, {}, {}) RGB scaled (x/255 - 0.5)/0.5, output `{}` float32 \
             (N, {}) before normalisation; opset {}",
            self.out.display(),
            crate::onnx::INPUT,
            c.input_h,
            c.input_w,
            crate::onnx::OUTPUT,
            c.embedding,
            crate::onnx::OPSET
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// `elasticface import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// A PyTorch state dict of an insightface/ElasticFace iResNet (`torch.save(backbone.state_dict(), path)`).
    #[arg(value_name = "PTH")]
    pub pth: PathBuf,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// The backbone file to write (.safetensors), for eval, embed, export or fine-tuning.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

impl ImportArgs {
    /// Converts the file.
    pub fn run(&self) -> Result<ExitCode> {
        let backbone = self.network.load(&self.pth).with_context(|| format!("importing {}", self.pth.display()))?;
        backbone.save(&self.out, json!({"imported_from": self.pth.display().to_string()}))?;
        println!("{}: {} -> {}", self.pth.display(), backbone.describe(), self.out.display());
        Ok(ExitCode::SUCCESS)
    }
}
